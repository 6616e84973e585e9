"""Fashion200K DataModule on a fixture in the official format: TIRG texts, parent pairs, caption labels,
quirks of the real files."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from datamodules.fashion200k import Fashion200KDataModule, modification_text, normalise, parents
from fgbench.data.batches import TripletBatch
from fgbench.data.validation import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetQuirkError,
)
from tests.fixtures import fails_then_skips
from tests.fixtures.composed import F200K_EMPTY, F200K_QUIRKS, write_fashion200k

DRESS = "women/dresses/casual_and_day_dresses"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_fashion200k(tmp_path)
    return tmp_path


def append(root: Path, rel: str, text: str) -> None:
    with open(root / "fashion200k" / rel, "a", encoding="utf-8") as f:
        f.write(text)


def test_tirg_text_rules() -> None:
    assert normalise(" a.b? c&d*e \n") == "adotmarkbquestionmark candmarkdstarmarke"
    assert modification_text("blue midi dress", "green midi dress") == "replace blue with green"
    assert modification_text("red dress", "red long dress") == "replace dress with long"  # TIRG: last word
    assert parents("red floral dress") == ["floral dress", "red dress", "red floral"]
    # TIRG removes a word with str.replace: its text goes from inside longer words too
    assert parents("red shredded top") == ["shded top", "red top", "red shredded"]


def test_train_pairs_differ_by_one_word(root: Path) -> None:
    dm = Fashion200KDataModule(root=str(root), batch_size=5)
    ds = dm.loaded.train
    # captions by id: 0 blue floral dress, 1 red floral dress, 2 sequin dress wdotmark belt,
    # 3 black leather jacket, 4 brown leather jacket, 5 slim jeans andmark belt
    assert ds.index.captions[2] == "sequin dress wdotmark belt" and dm.num_classes == 6
    assert ds.sources == [0, 1, 2, 4, 5]  # images with a one-word-different partner
    batch = next(iter(dm.train_dataloader()))  # the five sources in one batch
    assert isinstance(batch, TripletBatch)
    assert batch.reference.pixels.shape == batch.target.pixels.shape == (5, 3, 64, 64)
    target_of = {"red": 1, "blue": 0, "brown": 4, "black": 3}
    source_of = {"red": [1, 2], "blue": [0], "brown": [5], "black": [4]}
    for i, text, label in zip(batch.index.tolist(), batch.text.raw, batch.target_label.tolist(), strict=True):
        replace, x, with_, y = text.split()
        assert (replace, with_) == ("replace", "with") and label == target_of[y]
        assert ds.sources[i] in source_of[x]


def test_test_spec(root: Path) -> None:
    dm = Fashion200KDataModule(root=str(root))
    spec = dm.evaluation_set("test").spec
    assert dm.val_split == "test" and spec.protocol == "f200k"
    # gallery: 5001_0 blue midi, 5002_0 and 5002_1 green midi, 5003_0 blue maxi, 6001_0 white silk top?
    assert spec.gallery_labels.tolist() == [0, 1, 1, 2, 3]
    assert spec.query_labels.tolist() == [1, 0]
    assert spec.exclude.tolist() == [0, 3]
    queries = dm.loaded.eval_sets["test"].queries
    assert queries.texts == ["replace blue with green", "replace maxi with midi"]
    assert queries.ref_ids == [0, 3]
    assert len(next(iter(dm.test_dataloader()[1])).visual) == 5


def test_check_stats_and_count_warnings(root: Path) -> None:
    dm = Fashion200KDataModule(root=str(root))
    assert dm.check() == {
        "train": {"images": 7, "captions": 6, "labels": 6, "queries": 5, "gallery": 0, "missing": 0},
        "test": {"images": 5, "captions": 4, "labels": 4, "queries": 2, "gallery": 5, "missing": 0},
    }
    assert "fashion200k [test]: expected 33480 queries, found 2" in dm.loaded.warnings


def test_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"<root>/fashion200k/labels/\{dress,jacket"):
        Fashion200KDataModule(root=str(tmp_path)).setup()


def test_missing_image_fails_then_skip_missing_drops(root: Path) -> None:
    lost = root / "fashion200k" / DRESS / "5002" / "5002_0.jpeg"  # target of the first query
    make = functools.partial(Fashion200KDataModule, root=str(root))
    dm, message = fails_then_skips(make, [lost], r"\[test\]: 1 of 5 referenced files")
    assert str(lost) in message
    spec = dm.evaluation_set("test").spec
    assert spec.gallery_labels.tolist() == [0, 1, 2, 3]  # 5002_1 still carries "green midi dress"
    assert spec.query_labels.tolist() == [0] and spec.exclude.tolist() == [2]
    assert spec.info["n_missing"] == 1 and dm.check()["test"]["missing"] == 1


def test_unparsable_label_line(root: Path) -> None:
    append(root, "labels/jacket_train_detect_all.txt", "women/jackets/x/1.jpeg 0.5 no tabs here\n")
    with pytest.raises(DatasetFormatError, match=r"jacket_train_detect_all\.txt, line 3: 1 tab-separated"):
        Fashion200KDataModule(root=str(root)).setup()


def test_bad_query_lines(root: Path) -> None:
    append(root, "test_queries.txt", f"{DRESS}/5001/5001_0.jpeg women/dresses/unknown.jpeg\n")
    with pytest.raises(
        DatasetFormatError, match=r"test_queries\.txt, line 3, field 'target': .* not in the test"
    ):
        Fashion200KDataModule(root=str(root)).setup()
    (root / "fashion200k" / "test_queries.txt").write_text("a b c\n")
    with pytest.raises(DatasetFormatError, match=r"line 1: 3 fields"):
        Fashion200KDataModule(root=str(root)).setup()


def test_quirks_are_read_as_tirg_reads_them(tmp_path: Path) -> None:
    write_fashion200k(tmp_path, quirks=F200K_QUIRKS)
    append(tmp_path, "test_queries.txt", "\n")  # a blank line, then the file's last line
    append(tmp_path, "test_queries.txt", f"{DRESS}/5002/5002_1.jpeg {DRESS}/5001/5001_0.jpeg\n")
    dm = Fashion200KDataModule(root=str(tmp_path))
    spec = dm.evaluation_set("test").spec
    # gallery: dress 5001_0, 5002_0, 5002_1, 5003_0 (score "n/a"); top 6001_0, 6002_0 (empty caption),
    # 5001_0 again (its last line: queries on 5001_0 mean index 6)
    assert spec.gallery_labels.tolist() == [0, 1, 1, 2, 3, 4, 0]
    assert dm.loaded.eval_sets["test"].queries.ref_ids == [6, 3, 2]
    assert spec.exclude.tolist() == [6, 3, 2] and spec.query_labels.tolist() == [1, 0, 0]
    stats = dm.check()
    assert stats["test"] == {
        "images": 7,
        "captions": 5,
        "labels": 5,
        "queries": 3,
        "gallery": 7,
        "missing": 0,
    }
    assert stats["train"]["queries"] == 5 and stats["train"]["images"] == 7  # train reads as before
    counts = {split: {k: q["count"] for k, q in kinds.items()} for split, kinds in dm.loaded.quirks.items()}
    assert counts == {
        "train": {"extra_fields": 1, "blank_line": 1},
        "test": {"score_not_a_number": 1, "empty_caption": 1, "duplicate_image": 1, "blank_line": 1},
    }
    assert dm.loaded.quirks["train"]["blank_line"]["examples"][0]["where"] == "line 3"


def test_query_on_an_image_without_caption_stops(tmp_path: Path) -> None:
    write_fashion200k(tmp_path, quirks=["empty_caption"])
    append(tmp_path, "test_queries.txt", f"{F200K_EMPTY} {DRESS}/5001/5001_0.jpeg\n")
    with pytest.raises(
        DatasetFormatError, match=r"test_queries\.txt, line 3, field 'source': .* empty caption"
    ):
        Fashion200KDataModule(root=str(tmp_path)).setup()


@pytest.mark.parametrize("kind", F200K_QUIRKS)
def test_each_quirk_is_an_error_under_strict(tmp_path: Path, kind: str) -> None:
    write_fashion200k(tmp_path, quirks=[kind])
    quirks = Fashion200KDataModule(root=str(tmp_path)).loaded.quirks
    assert sum(kinds[kind]["count"] for kinds in quirks.values() if kind in kinds) == 1
    with pytest.raises(DatasetQuirkError, match="strict=True refuses"):
        Fashion200KDataModule(root=str(tmp_path), strict=True).setup()
