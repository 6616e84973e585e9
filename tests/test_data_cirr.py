"""CIRR DataModule on a fixture in the official format: batches, EvalSpec definitions, stats, quirks of the
real files, bad input."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules.cirr import CIRRDataModule
from fgbench.data.batches import ComposedQueryBatch, TripletBatch, VisualBatch
from fgbench.data.validation import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetQuirkError,
    MissingFilesError,
)
from fgbench.evaluation import evaluate
from tests.fixtures import fails_then_skips
from tests.fixtures.composed import CIRR_QUIRKS, cirr_name, edit_json, write_cirr


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_cirr(tmp_path)
    return tmp_path


def dev(*numbers: int) -> list[str]:
    return [cirr_name("val", i) for i in numbers]


def edit_captions(root: Path, split: str, change: Callable[[list[dict]], Any]) -> None:
    edit_json(root / "cirr_dataset" / "cirr" / "captions" / f"cap.rc2.{split}.json", change)


def test_train_batches(root: Path) -> None:
    dm = CIRRDataModule(root=str(root), batch_size=2)
    ds = dm.loaded.train
    assert (ds.ref_ids, ds.tgt_ids) == ([0, 2, 5], [1, 5, 2])  # train split order is image 0..5
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, TripletBatch)
    assert batch.reference.pixels.shape == batch.target.pixels.shape == (2, 3, 64, 64)
    assert len(batch.text.raw) == 2 and batch.index.shape == batch.target_label.shape == (2,)
    captions = {"add a second dog": 1, "make it night": 5, "same scene in daylight": 2}
    assert [captions[t] for t in batch.text.raw] == batch.target_label.tolist()
    assert dm.num_classes == 6


def test_val_spec_follows_the_split_order(root: Path) -> None:
    spec = CIRRDataModule(root=str(root)).evaluation_set("val").spec
    # split file order: images 3, 0, 7, 1, 2, 6, 4, 5
    assert spec.protocol == "cirr"
    assert spec.gallery_names == dev(3, 0, 7, 1, 2, 6, 4, 5)
    assert spec.query_ids == ["10", "11", "12"]
    assert spec.query_labels.tolist() == [3, 2, 0]  # targets 1, 7, 3
    assert spec.exclude.tolist() == [1, 4, 7]  # references 0, 2, 5
    assert spec.subsets.tolist() == [[1, 3, 4, 0, 6, 7], [4, 0, 6, 7, 5, 2], [4, 0, 6, 7, 5, 2]]
    assert spec.gallery_labels.tolist() == list(range(8))


def test_val_loaders(root: Path) -> None:
    dm = CIRRDataModule(root=str(root), eval_batch_size=2)
    queries, gallery = dm.val_dataloader()
    q = next(iter(queries))
    assert isinstance(q, ComposedQueryBatch) and q.text.raw == ["has two dogs", "zoom in on the cup"]
    assert q.reference.pixels.shape == (2, 3, 64, 64)
    assert dm.loaded.eval_sets["val"].queries.ref_ids == dm.evaluation_set("val").spec.exclude.tolist()
    assert sum(len(b.visual) for b in gallery) == 8 and isinstance(next(iter(gallery)), VisualBatch)


def test_test1_has_no_labels(root: Path) -> None:
    dm = CIRRDataModule(root=str(root))
    assert dm.test_split == "test1"
    spec = dm.evaluation_set("test1").spec
    assert spec.query_labels is None and spec.n_query == 2
    assert spec.query_ids == ["20", "21"]
    assert spec.gallery_names == [cirr_name("test1", i) for i in [6, 5, 4, 3, 2, 1, 0]]
    assert spec.exclude.tolist() == [6, 0]  # references 0 and 6
    assert spec.subsets.tolist() == [[6, 5, 4, 3, 2, 1], [5, 4, 3, 2, 1, 0]]


def test_check_stats_and_count_warnings(root: Path) -> None:
    dm = CIRRDataModule(root=str(root))
    assert dm.check() == {
        "train": {"images": 6, "captions": 3, "labels": 3, "queries": 3, "gallery": 0, "missing": 0},
        "val": {"images": 8, "captions": 3, "labels": 3, "queries": 3, "gallery": 8, "missing": 0}
        | {"image_sets": 2, "references": 3},
        "test1": {"images": 7, "captions": 2, "labels": 0, "queries": 2, "gallery": 7, "missing": 0}
        | {"image_sets": 2, "references": 2},
    }
    assert "cirr [val]: expected 4181 queries, found 3" in dm.loaded.warnings


def test_subclass_reads_its_own_folder(tmp_path: Path) -> None:
    class OtherCIR(CIRRDataModule):
        name = "other-cir"
        folder = "other_cir"
        expected = {"val": {"queries": 3}}

    write_cirr(tmp_path, folder="other_cir")
    dm = OtherCIR(root=str(tmp_path))
    assert dm.check()["val"]["queries"] == 3 and dm.loaded.warnings == []
    assert "<root>/other_cir/dev/dev-*.png" in OtherCIR.layout and "cirr_dataset" not in OtherCIR.layout
    with pytest.raises(DatasetNotFoundError, match="other_cir/cirr/captions"):
        OtherCIR(root=str(tmp_path / "nowhere")).setup()


def test_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        CIRRDataModule(root=str(tmp_path)).setup()
    assert "Expected layout" in str(err.value) and "<root>/cirr_dataset/dev/dev-*.png" in str(err.value)


def test_missing_image_fails_then_skip_missing_drops(root: Path) -> None:
    lost = root / "cirr_dataset" / "dev" / f"{cirr_name('val', 7)}.png"
    make = functools.partial(CIRRDataModule, root=str(root))
    dm, message = fails_then_skips(make, [lost], r"cirr \[val\]: 1 of 8 referenced files are missing")
    assert str(lost) in message
    spec = dm.evaluation_set("val").spec
    # queries 11 (target 7) and 12 (image set holds 7) are dropped; the gallery loses image 7
    assert spec.gallery_names == dev(3, 0, 1, 2, 6, 4, 5)
    assert spec.query_ids == ["10"] and spec.query_labels.tolist() == [2] and spec.exclude.tolist() == [1]
    assert spec.info["n_missing"] == 1 and dm.check()["val"]["missing"] == 1
    assert dm.loaded.missing["val"] == [str(lost)]


def test_val_images_outside_dev_get_a_hint(root: Path) -> None:
    base = root / "cirr_dataset"
    (base / "dev").rename(base / "val")
    with pytest.raises(MissingFilesError, match=r"No folder .*/dev/: the images of split 'val' belong there"):
        CIRRDataModule(root=str(root)).setup()


def test_resolve_by_name_finds_flattened_train_images(root: Path) -> None:
    train = root / "cirr_dataset" / "train"
    for f in (train / "1").iterdir():
        shutil.move(str(f), str(train / f.name))
    with pytest.raises(MissingFilesError, match="resolve_by_name=True"):
        CIRRDataModule(root=str(root)).setup()
    dm = CIRRDataModule(root=str(root), resolve_by_name=True)
    paths = dm.loaded.train.store.paths
    assert paths[1] == train / f"{cirr_name('train', 1)}.png" and all(p.is_file() for p in paths)
    assert dm.check()["train"]["missing"] == 0


def test_invalid_json_names_the_position(root: Path) -> None:
    file = root / "cirr_dataset" / "cirr" / "captions" / "cap.rc2.val.json"
    file.write_text('[\n {"pairid": 1,,}\n]')
    with pytest.raises(DatasetFormatError, match=r"cap\.rc2\.val\.json, line 2, column 15: invalid JSON"):
        CIRRDataModule(root=str(root)).setup()


@pytest.mark.parametrize(
    ("split", "change", "message"),
    [
        ("val", lambda e: e[1].pop("caption"), r"entry 1 \(pairid 11\), field 'caption': missing field"),
        # only test1 may lack targets
        (
            "val",
            lambda e: e[2].pop("target_hard"),
            r"entry 2 \(pairid 12\), field 'target_hard': missing field",
        ),
        (
            "val",
            lambda e: e[0]["img_set"].update(members=dev(1, 2, 3, 4, 5, 6)),
            r"entry 0 .*reference 'dev-0-0-img0' is not among the img_set",
        ),
        (
            "test1",
            lambda e: e[0]["img_set"]["members"].__setitem__(5, "test1-99-0-img1"),
            r"entry 0 .*image 'test1-99-0-img1' is not in the split file",
        ),
        # the reference leaves its own candidates (CLIP4Cir asserts one positive): unusable in val
        (
            "val",
            lambda e: e[0].update(target_hard=e[0]["reference"]),
            r"entry 0 \(pairid 10\): target_hard equals the reference",
        ),
    ],
    ids=[
        "missing_field",
        "only_test1_lacks_targets",
        "reference_not_a_member",
        "name_outside_split",
        "target_is_reference",
    ],
)
def test_bad_entry_is_named(
    root: Path, split: str, change: Callable[[list[dict]], Any], message: str
) -> None:
    edit_captions(root, split, change)
    with pytest.raises(DatasetFormatError, match=message):
        CIRRDataModule(root=str(root)).setup()


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    write_cirr(tmp_path, quirks=CIRR_QUIRKS)
    return tmp_path


def test_quirks_are_read_as_clip4cir_reads_them(quirky: Path) -> None:
    dm = CIRRDataModule(root=str(quirky))
    train = dm.loaded.train
    assert (train.ref_ids, train.tgt_ids) == ([0, 2, 5], [1, 2, 2])  # reference = target stays a triplet
    spec = dm.evaluation_set("val").spec
    es = dm.loaded.eval_sets["val"]
    assert es.queries.texts[1] == " "  # the caption as written
    # members 2, 3, 3, 5, 6, 7 -> the repeated 3 is padding; 2, 3, 5, 6, 7 sit at 4, 0, 7, 5, 2
    assert spec.subsets.tolist()[2] == [4, 0, -1, 7, 5, 2]
    assert dm.evaluation_set("test1").spec.query_ids == ["20", "20"]
    stats = dm.check()
    assert (stats["train"]["queries"], stats["val"]["queries"], stats["test1"]["queries"]) == (3, 3, 2)
    assert (stats["val"]["gallery"], stats["test1"]["gallery"]) == (8, 7)
    counts = {split: {k: q["count"] for k, q in kinds.items()} for split, kinds in dm.loaded.quirks.items()}
    assert counts == {
        "train": {"reference_is_target": 1, "train_img_set": 1},
        "val": {"empty_caption": 1, "repeated_member": 1},
        "test1": {"duplicate_pairid": 1},
    }
    assert dm.loaded.quirks["train"]["train_img_set"]["examples"][0]["where"] == "entry 0 (pairid 100)"
    scores = torch.zeros(spec.n_query, spec.n_gallery)
    scores[torch.arange(spec.n_query), spec.query_labels] = 1.0
    metrics = evaluate(scores, spec).metrics
    assert metrics["R1"] == 100.0 and metrics["Rsub1"] == 100.0


@pytest.mark.parametrize("kind", CIRR_QUIRKS)
def test_each_quirk_is_an_error_under_strict(tmp_path: Path, kind: str) -> None:
    write_cirr(tmp_path, quirks=[kind])
    assert (
        sum(
            kinds.get(kind, {}).get("count", 0)
            for kinds in CIRRDataModule(root=str(tmp_path)).loaded.quirks.values()
        )
        == 1
    )
    with pytest.raises(DatasetQuirkError, match="strict=True refuses"):
        CIRRDataModule(root=str(tmp_path), strict=True).setup()
