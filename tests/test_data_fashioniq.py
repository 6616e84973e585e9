"""FashionIQ DataModule on a fixture in the official format: fiq_a/fiq_b queries, groups, stats, quirks of the
real files, bad input."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules.fashioniq import FashionIQDataModule
from fgbench.data.batches import ComposedQueryBatch, TripletBatch
from fgbench.data.validation import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetQuirkError,
    MissingFilesError,
)
from fgbench.evaluation import evaluate
from tests.fixtures import fails_then_skips
from tests.fixtures.composed import FIQ_QUIRKS, edit_json, write_fashioniq

TEXTS_A = ["Is red and has short sleeves", "Darker navy and more casual"]
TEXTS_B = [
    "is red and has short sleeves",
    "has short sleeves and is red",
    "Darker NAVY and more casual",
    "more casual and Darker NAVY",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_fashioniq(tmp_path)
    return tmp_path


def edit_file(root: Path, rel: str, change: Callable[[list], Any]) -> None:
    edit_json(root / "fashionIQ_dataset" / rel, change)


def test_train_batches_and_random_texts(root: Path) -> None:
    dm = FashionIQDataModule(root=str(root), batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TripletBatch)
    assert batch.reference.pixels.shape == batch.target.pixels.shape == (4, 3, 64, 64)
    assert len(batch.text.raw) == 4 and batch.target_label.shape == (4,)
    ds = dm.train_dataset()  # the loaders' copy, with the processor's transform
    assert len(ds) == 6 and dm.num_classes == 12  # 2 triplets x 3 categories over 12 distinct images
    random.seed(0)
    drawn = {ds[0]["text"] for _ in range(60)}
    assert drawn == {
        "Is red and has short sleeves",
        "Has short sleeves and is red",
        "Is red",
        "Has short sleeves",
    }


def test_concat_train_text(root: Path) -> None:
    ds = FashionIQDataModule(root=str(root), train_text="concat").loaded.train
    assert ds.texts == TEXTS_A * 3


def test_fiq_a_spec(root: Path) -> None:
    dm = FashionIQDataModule(root=str(root))
    spec = dm.evaluation_set("val").spec
    queries = dm.loaded.eval_sets["val"].queries
    # galleries: dress 0-3, shirt 4-7, toptee 8-12 (toptee also holds shirt_val_0)
    assert spec.protocol == "fiq_a" and spec.gallery_labels.tolist() == list(range(13))
    assert queries.texts == TEXTS_A * 3
    assert queries.ref_ids == [0, 2, 4, 6, 8, 10]
    assert spec.query_labels.tolist() == [1, 3, 5, 7, 9, 11]
    assert spec.exclude.tolist() == [-1] * 6  # the candidate stays a candidate
    groups = {k: (q.tolist(), g.tolist()) for k, (q, g) in spec.groups.items()}
    assert groups == {
        "dress": ([0, 1], [0, 1, 2, 3]),
        "shirt": ([2, 3], [4, 5, 6, 7]),
        "toptee": ([4, 5], [8, 9, 10, 11, 12]),
    }
    q = next(iter(dm.val_dataloader()[0]))
    assert isinstance(q, ComposedQueryBatch) and q.text.raw == TEXTS_A * 3


def test_fiq_b_spec(root: Path) -> None:
    dm = FashionIQDataModule(root=str(root), protocol="fiq_b")
    spec = dm.evaluation_set("val").spec
    assert spec.protocol == "fiq_b"
    assert dm.loaded.eval_sets["val"].queries.texts == TEXTS_B * 3
    assert spec.query_labels.tolist() == [1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11]
    assert spec.exclude.tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10]
    assert spec.groups["toptee"][0].tolist() == [8, 9, 10, 11]


def test_one_category(root: Path) -> None:
    dm = FashionIQDataModule(root=str(root), categories="shirt")
    spec = dm.evaluation_set("val").spec
    assert spec.query_labels.tolist() == [1, 3] and spec.n_gallery == 4
    assert list(spec.groups) == ["shirt"] and spec.info["categories"] == ["shirt"]
    assert len(dm.loaded.train) == 2


def test_test_split_has_no_labels(root: Path) -> None:
    spec = FashionIQDataModule(root=str(root)).evaluation_set("test").spec
    assert spec.query_labels is None and spec.n_query == 3 and spec.n_gallery == 9


def test_check_stats_and_count_warnings(root: Path) -> None:
    dm = FashionIQDataModule(root=str(root), categories=["dress", "toptee"])
    stats = dm.check()
    assert stats["val"] == {
        "triplets": 4,
        "images": 9,
        "captions": 8,
        "labels": 4,
        "queries": 4,
        "gallery": 9,
        "missing": 0,
    }
    assert stats["train"] == {
        "triplets": 4,
        "images": 8,
        "captions": 8,
        "labels": 4,
        "queries": 4,
        "gallery": 0,
        "missing": 0,
    }
    assert stats["test"] == {
        "triplets": 2,
        "images": 6,
        "captions": 4,
        "labels": 0,
        "queries": 2,
        "gallery": 6,
        "missing": 0,
    }
    # per-category rows beside the totals
    assert stats["val/toptee"] == {
        "triplets": 2,
        "images": 5,
        "captions": 4,
        "labels": 2,
        "queries": 2,
        "gallery": 5,
        "missing": 0,
    }
    assert stats["train/dress"]["queries"] == 2 and stats["test/dress"]["gallery"] == 3
    assert "fashioniq [val/dress]: expected 2017 triplets, found 2" in dm.loaded.warnings
    # totals over the loaded categories: dress + toptee val = 2017 + 1961 queries under fiq_a
    assert "fashioniq [val]: expected 3978 queries, found 4" in dm.loaded.warnings


def test_expected_counts_follow_categories_and_protocol() -> None:
    a = FashionIQDataModule(categories="shirt").expected
    b = FashionIQDataModule(protocol="fiq_b").expected
    assert a["val/shirt"] == {
        "triplets": 2038,
        "images": 6346,
        "captions": 4076,
        "queries": 2038,
        "gallery": 6346,
    }
    assert a["val"]["gallery"] == 6346 and "val/dress" not in a
    assert b["val"]["queries"] == 2 * (2017 + 2038 + 1961) and b["val"]["gallery"] == 3817 + 6346 + 5373
    assert b["train"]["queries"] == 5985 + 5988 + 6027 and "gallery" not in b["train"]


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="unknown categories \\['dresses'\\]"):
        FashionIQDataModule(categories=["dresses"])
    with pytest.raises(ValueError, match="unknown protocol 'fiq_c'"):
        FashionIQDataModule(protocol="fiq_c")


def test_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="fashionIQ_dataset/images/<ASIN>.jpg"):
        FashionIQDataModule(root=str(tmp_path)).setup()


def test_missing_image_fails_then_skip_missing_drops(root: Path) -> None:
    lost = root / "fashionIQ_dataset" / "images" / "shirt_val_1.jpg"  # target of shirt's first val triplet
    make = functools.partial(FashionIQDataModule, root=str(root))
    dm, message = fails_then_skips(make, [lost], r"\[val\]: 1 of 12 referenced files")
    assert str(lost) in message and "Tried <ASIN>.jpg" in message
    spec = dm.evaluation_set("val").spec
    assert spec.n_gallery == 12 and spec.info["n_missing"] == 1
    assert spec.query_labels.tolist() == [1, 3, 6, 8, 10]  # shirt block is now 4, 5, 6
    assert spec.groups["shirt"][1].tolist() == [4, 5, 6]
    assert dm.check()["val"]["missing"] == 1 and dm.loaded.missing["val"] == [str(lost)]


def test_png_images_get_a_hint(tmp_path: Path) -> None:
    write_fashioniq(tmp_path, ext=".png")
    with pytest.raises(MissingFilesError, match=r"exist as \.png .*convert or rename them to \.jpg"):
        FashionIQDataModule(root=str(tmp_path)).setup()


def test_invalid_json_names_the_position(root: Path) -> None:
    (root / "fashionIQ_dataset" / "captions" / "cap.shirt.val.json").write_text('[{"candidate": "a"')
    with pytest.raises(DatasetFormatError, match=r"cap\.shirt\.val\.json, line 1, column 19: invalid JSON"):
        FashionIQDataModule(root=str(root)).setup()


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (
            "cap.dress.val",
            lambda e: e[1].pop("captions"),
            r"cap\.dress\.val\.json, entry 1, field 'captions': missing",
        ),
        # CLIP4Cir asserts one positive per val query: a target outside the split file stops the run
        (
            "cap.toptee.val",
            lambda e: e[0].update(target="dress_val_1"),
            r"entry 0, field 'target': 'dress_val_1' is not in split",
        ),
        (
            "cap.dress.train",
            lambda e: e[1]["captions"].append("third"),
            r"entry 1, field 'captions'.*expected two caption strings",
        ),
    ],
    ids=["missing_field", "target_outside_split", "three_captions"],
)
def test_bad_entry_is_named(root: Path, file: str, change: Callable[[list[dict]], Any], message: str) -> None:
    edit_file(root, f"captions/{file}.json", change)
    with pytest.raises(DatasetFormatError, match=message):
        FashionIQDataModule(root=str(root)).setup()


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    write_fashioniq(tmp_path, quirks=FIQ_QUIRKS)
    return tmp_path


def test_quirks_are_read_as_clip4cir_reads_them(quirky: Path) -> None:
    dm = FashionIQDataModule(root=str(quirky))
    spec = dm.evaluation_set("val").spec
    es = dm.loaded.eval_sets["val"]
    # gallery: dress 0-4 (dress_val_1 listed twice: 1 and 4 share label 1), shirt 5-8, toptee 9-13;
    # shirt_extra_0 (outside its split) is store item 14, a query image only
    assert spec.gallery_labels.tolist() == [0, 1, 2, 3, 1, *range(5, 14)]
    assert len(es.gallery) == 14 and len(es.queries.store) == 15
    assert es.queries.ref_ids == [0, 2, 3, 5, 7, 5, 14, 9, 11]
    assert spec.query_labels.tolist() == [1, 3, 3, 6, 8, 6, 8, 10, 12]
    assert es.queries.texts[0] == "Is red and "  # CLIP4Cir's join of an empty second caption
    assert es.queries.texts[2] == "Is the same and same dress"
    stats = dm.check()
    assert stats["val/dress"] == {
        "triplets": 3,
        "images": 5,
        "captions": 6,
        "labels": 2,
        "queries": 3,
        "gallery": 5,
        "missing": 0,
    }
    assert stats["val/shirt"]["queries"] == 4 and stats["val/shirt"]["gallery"] == 4
    assert stats["val"]["queries"] == 9 and stats["val"]["gallery"] == 14
    counts = {kind: q["count"] for kind, q in dm.loaded.quirks["val"].items()}
    assert counts == {kind: 1 for kind in FIQ_QUIRKS}
    example = dm.loaded.quirks["val"]["duplicate_asin"]["examples"][0]
    assert example["where"] == "entry 4" and example["file"].endswith("split.dress.val.json")
    # the evaluator scores every query: each has its positive among its candidates
    scores = torch.zeros(spec.n_query, spec.n_gallery)
    scores[torch.arange(spec.n_query), spec.query_labels] = 1.0
    assert evaluate(scores, spec).metrics["avg_R10"] == 100.0


def test_fiq_b_keeps_the_candidate_that_is_its_own_target(quirky: Path) -> None:
    spec = FashionIQDataModule(root=str(quirky), protocol="fiq_b").evaluation_set("val").spec
    assert spec.exclude.tolist() == [0, 0, 2, 2, -1, -1, 5, 5, 7, 7, 5, 5, -1, -1, 9, 9, 11, 11]
    scores = torch.zeros(spec.n_query, spec.n_gallery)
    scores[torch.arange(spec.n_query), spec.query_labels] = 1.0
    assert evaluate(scores, spec).metrics["avg_R10"] == 100.0


@pytest.mark.parametrize("kind", FIQ_QUIRKS)
def test_each_quirk_is_an_error_under_strict(tmp_path: Path, kind: str) -> None:
    write_fashioniq(tmp_path, quirks=[kind])
    dm = FashionIQDataModule(root=str(tmp_path))
    assert dm.loaded.quirks["val"][kind]["count"] == 1
    with pytest.raises(DatasetQuirkError, match="strict=True refuses"):
        FashionIQDataModule(root=str(tmp_path), strict=True).setup()


def test_train_quirks_are_reported_per_split(root: Path) -> None:
    edit_file(root, "captions/cap.dress.train.json", lambda e: e[1].update(target=e[1]["candidate"]))
    edit_file(root, "image_splits/split.toptee.train.json", lambda e: e.append(e[0]))
    dm = FashionIQDataModule(root=str(root))
    assert len(dm.loaded.train) == 6  # the triplet stays a training sample
    assert {k: q["count"] for k, q in dm.loaded.quirks["train"].items()} == {
        "candidate_is_target": 1,
        "duplicate_asin": 1,
    }
    assert dm.check()["train/toptee"]["images"] == 5  # the split file's length, repeat included
