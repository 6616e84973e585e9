"""Flickr30K / COCO DataModules on tiny fixtures in the official formats."""

from __future__ import annotations

import functools
import json
import pickle
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from datamodules.itm import COCODataModule, Flickr30KDataModule, load_relevances
from datamodules.itm import readers as itm_readers
from fgbench.data.validation import (
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetQuirkError,
    MissingFilesError,
)
from fgbench.registry import DATAMODULES
from tests.fixtures import fails_then_skips
from tests.fixtures import itm as fx

# Karpathy indices of each split's images, in images[] order (tests/fixtures/itm.py F30K_SPLITS, COCO_SPLITS)
F30K = {"train": [0, 2, 5], "val": [3, 6], "test": [1, 4]}
COCO = {"train": [0, 2, 7], "val": [4, 9], "test": [1, 3, 5, 6, 8, 10, 11, 12, 13, 14]}


def image_of(text: str) -> int:
    """Karpathy index of the fixture image a caption ("image {i} caption {k}") belongs to."""
    return int(text.split()[1])


def red(i: int) -> float:
    """The normalised red channel of fixture image i (BasicProcessor: mean = std = 0.5)."""
    return ((40 * i) % 256 / 255 - 0.5) / 0.5


def test_registered() -> None:
    assert DATAMODULES.get("f30k") is Flickr30KDataModule
    assert DATAMODULES.get("coco") is COCODataModule
    assert Flickr30KDataModule.tasks == frozenset({"text-image", "image-text"})


# -- images: Karpathy JSON + raw images ---------------------------------------------------------------


def test_f30k_images_train_batch_and_stats(tmp_path: Path) -> None:
    fx.write_f30k_images(tmp_path)
    dm = Flickr30KDataModule(root=str(tmp_path), batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch.visual.pixels.shape == (4, 3, 64, 64)
    for text, label, image_index, px in zip(
        batch.text.raw, batch.label, batch.image_index, batch.visual.pixels, strict=True
    ):
        i = F30K["train"][int(label)]
        assert image_of(text) == i and int(image_index) == int(label)
        assert float(px[0].mean()) == pytest.approx(red(i), abs=0.03)
    assert dm.check() == {
        "train": {"images": 3, "captions": 15, "labels": 3, "queries": 15, "gallery": 0, "missing": 0},
        "val": {"images": 2, "captions": 10, "labels": 2, "queries": 10, "gallery": 2, "missing": 0},
        "test": {"images": 2, "captions": 10, "labels": 2, "queries": 10, "gallery": 2, "missing": 0},
    }
    assert dm.num_classes == 3
    assert any("expected 29000 images, found 3" in w for w in dm.loaded.warnings)


def test_f30k_eval_spec_orientation_and_loaders(tmp_path: Path) -> None:
    fx.write_f30k_images(tmp_path)
    dm = Flickr30KDataModule(root=str(tmp_path), eval_batch_size=16)
    spec = dm.evaluation_set("test").spec
    assert spec.protocol == "f30k_1k"
    assert spec.query_labels.tolist() == [0, 1]  # rows = images
    assert spec.gallery_labels.tolist() == [0] * 5 + [1] * 5  # columns = captions
    assert spec.info["orientation"] == "rows=images"
    assert spec.info["feature_source"] == "images" and spec.info["caption_policy"] == "first5"
    queries, gallery = (next(iter(dl)) for dl in dm.test_dataloader())
    assert [image_of(t) for t in queries.text.raw] == [1] * 5 + [4] * 5
    assert queries.text.raw[0] == "image 1 caption 0"  # raw, stripped
    assert gallery.visual.pixels.shape == (2, 3, 64, 64)
    assert gallery.visual.pixels[:, 0].mean((1, 2)).tolist() == pytest.approx([red(1), red(4)], abs=0.03)
    assert dm.evaluation_set("val").spec.protocol == "f30k_1k"


def test_coco_train_has_restval_in_file_order_and_caption_policies(tmp_path: Path) -> None:
    fx.write_coco_images(tmp_path)
    dm = COCODataModule(root=str(tmp_path))
    train = dm.loaded.train
    assert [image_of(train.captions[j]) for j in range(0, 15, 5)] == COCO["train"]
    assert dm.check()["test"]["captions"] == 50
    dm_all = COCODataModule(root=str(tmp_path), caption_policy="all")
    spec = dm_all.evaluation_set("test").spec
    assert dm_all.check()["test"]["captions"] == 51
    assert spec.info["caption_policy"] == "all"
    assert spec.gallery_labels.tolist()[:11] == [0] * 5 + [1] * 6  # image 3 has six sentences
    assert any("expected 25010 captions, found 51" in w for w in dm_all.loaded.warnings)


def test_coco_1k_5fold_folds_follow_file_order(tmp_path: Path) -> None:
    fx.write_coco_images(tmp_path)
    dm = COCODataModule(root=str(tmp_path), coco_protocol="coco_1k_5fold")
    spec = dm.evaluation_set("test").spec
    assert spec.protocol == "coco_1k_5fold" and spec.info["protocol"] == "coco_1k_5fold"
    assert spec.query_labels.tolist() == list(range(10))
    captions = dm.loaded.eval_sets["test"].queries.captions
    for f in range(5):  # fold f = images 2f, 2f+1 (file order) with captions 10f .. 10f+9
        cols = torch.nonzero(torch.isin(spec.gallery_labels, torch.arange(2 * f, 2 * f + 2))).squeeze(1)
        assert cols.tolist() == list(range(10 * f, 10 * f + 10))
        assert {image_of(captions[c]) for c in cols} == set(COCO["test"][2 * f : 2 * f + 2])
    assert COCODataModule(root=str(tmp_path)).evaluation_set("test").spec.protocol == "coco_5k"


def test_val_uses_first_captions(tmp_path: Path) -> None:
    fx.write_coco_images(tmp_path)
    dm = COCODataModule(root=str(tmp_path), val_captions=5)
    spec = dm.evaluation_set("val").spec
    assert spec.protocol == "f30k_1k" and spec.info["val_captions"] == 5
    assert spec.query_labels.tolist() == [0] and spec.gallery_labels.tolist() == [0] * 5
    assert dm.check()["val"] == {
        "images": 2,
        "captions": 10,
        "labels": 1,
        "queries": 5,
        "gallery": 1,
        "missing": 0,
    }


def test_with_boxes_normalised_by_image_size(tmp_path: Path) -> None:
    base = fx.write_f30k_images(tmp_path)
    n = len(fx.F30K_SPLITS)
    fx.write_boxes(base, range(n), [fx.image_size(i) for i in range(n)])
    dm = Flickr30KDataModule(root=str(tmp_path), with_boxes=True)
    item = dm.test_dataloader()[1].dataset[1]  # Karpathy image 4, with the eval transform
    assert item["pixels"].shape == (3, 64, 64)
    assert item["boxes"].tolist() == [[0, 0, 1, 1], [0, 0, 0.5, 1], [0, 0, 1, 0.5]]
    assert dm.evaluation_set("test").spec.info["boxes"] is True
    (base / "features_36" / "bu_box" / "4.npy").unlink()
    with pytest.raises(MissingFilesError, match=r"\[test\]: 1 of 4 referenced files are missing"):
        Flickr30KDataModule(root=str(tmp_path), with_boxes=True).setup()


def test_subclass_in_another_folder(tmp_path: Path) -> None:
    class Scenes(Flickr30KDataModule):
        name: ClassVar[str] = "synth-scenes-test"
        folder: ClassVar[str] = "synth_scenes"
        expected: ClassVar[dict] = {}

    with pytest.raises(DatasetNotFoundError, match=r"synth_scenes/flickr30k-images"):
        Scenes(root=str(tmp_path)).setup()
    fx.write_f30k_images(tmp_path, folder="synth_scenes")
    dm = Scenes(root=str(tmp_path))
    assert dm.check()["test"]["gallery"] == 2 and dm.loaded.warnings == []


# -- bad input --------------------------------------------------------------------------------------------


def test_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"(?s)f30k: .*Flickr30K not found.*flickr30k-images"):
        Flickr30KDataModule(root=str(tmp_path)).setup()
    (tmp_path / "COCO").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)dataset_coco.json not found.*train2014"):
        COCODataModule(root=str(tmp_path)).setup()


def test_missing_images_listed_counted_and_skipped(tmp_path: Path) -> None:
    base = fx.write_f30k_images(tmp_path)
    dm, _ = fails_then_skips(
        functools.partial(Flickr30KDataModule, root=str(tmp_path)),
        [base / "flickr30k-images" / f"img{i}.jpg" for i in (1, 0)],  # a test image and a train image
        r"(?s)\[train\]: 1 of 3 .*img0.jpg.*skip_missing=True",
    )
    stats = dm.check()
    assert stats["train"] == {
        "images": 3,
        "captions": 15,
        "labels": 2,
        "queries": 10,
        "gallery": 0,
        "missing": 1,
    }
    assert stats["test"] == {
        "images": 2,
        "captions": 10,
        "labels": 1,
        "queries": 5,
        "gallery": 1,
        "missing": 1,
    }
    assert dm.loaded.missing["test"] == [str(base / "flickr30k-images" / "img1.jpg")]
    spec = dm.evaluation_set("test").spec
    assert spec.query_labels.tolist() == [0] and spec.gallery_labels.tolist() == [0] * 5
    assert spec.info["n_missing"] == 1
    assert {image_of(c) for c in dm.loaded.eval_sets["test"].queries.captions} == {4}


def test_malformed_json_names_position(tmp_path: Path) -> None:
    base = fx.write_f30k_images(tmp_path)
    (base / "dataset_flickr30k.json").write_text('{"images": [\n  {"filename": }', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"dataset_flickr30k.json, line 2, column 16: invalid JSON"):
        Flickr30KDataModule(root=str(tmp_path)).setup()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.pop("split"), r"images\[2\], field 'split': missing field"),
        (lambda e: e["sentences"][1].pop("raw"), r"images\[2\].sentences\[1\], field 'raw': missing field"),
        (lambda e: e.pop("cocoid"), r"images\[2\], field 'cocoid': missing field"),
    ],
)
def test_malformed_karpathy_entry(tmp_path: Path, edit, message: str) -> None:
    base = fx.write_coco_images(tmp_path)
    data = json.loads((base / "dataset_coco.json").read_text())
    edit(data["images"][2])
    fx.write_json(base / "dataset_coco.json", data)
    with pytest.raises(DatasetFormatError, match=message):
        COCODataModule(root=str(tmp_path)).setup()


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="feature_source 'regions'"):
        Flickr30KDataModule(feature_source="regions")
    with pytest.raises(ValueError, match="coco_1k"):
        COCODataModule(coco_protocol="coco_1k")
    with pytest.raises(ValueError, match="with_boxes"):
        COCODataModule(feature_source="precomp", with_boxes=True)


# -- precomp: SCAN files ------------------------------------------------------------------------------


def test_precomp_memmap_batches_and_stats(tmp_path: Path) -> None:
    fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2})
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="precomp", batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch.visual.regions.shape == (4, fx.REGIONS, fx.DIM)
    assert batch.visual.regions[:, 0, 0].tolist() == batch.label.float().tolist()  # image j holds j
    assert [int(t.split()[2]) for t in batch.text.raw] == batch.label.tolist()
    store = dm.loaded.train.store
    assert isinstance(store.array, np.memmap)
    assert pickle.loads(pickle.dumps(store))._array is None  # workers re-open the map, never copy it
    assert dm.check()["test"] == {
        "images": 2,
        "captions": 10,
        "labels": 2,
        "queries": 10,
        "gallery": 2,
        "missing": 0,
    }
    spec = dm.evaluation_set("val").spec
    assert spec.info["file_split"] == "dev" and spec.info["boxes"] is False
    assert spec.gallery_labels.tolist() == [0] * 5 + [1] * 5


def test_precomp_one_caption_per_image(tmp_path: Path) -> None:
    fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2}, per_image=1)
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="precomp")
    assert dm.evaluation_set("test").spec.gallery_labels.tolist() == [0, 1]


def test_precomp_caption_count_mismatch(tmp_path: Path) -> None:
    folder = fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2})
    (folder / "test_caps.txt").write_text("a\n" * 7, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"test_caps.txt: 7 lines for 2 images in .*test_ims.npy"):
        Flickr30KDataModule(root=str(tmp_path), feature_source="precomp").setup()


def test_coco_precomp_test_vs_testall(tmp_path: Path) -> None:
    folder = fx.write_precomp(tmp_path, "coco", {"train": 3, "dev": 2, "test": 2, "testall": 10})
    dm = COCODataModule(root=str(tmp_path), feature_source="precomp", coco_protocol="coco_1k_5fold")
    assert dm.check()["test"]["gallery"] == 10
    assert dm.evaluation_set("test").spec.info["file_split"] == "testall"
    with pytest.raises(DatasetError, match="not the 1K protocol"):
        COCODataModule(root=str(tmp_path), feature_source="precomp", precomp_test_file="test").setup()
    forced = COCODataModule(
        root=str(tmp_path), feature_source="precomp", precomp_test_file="test", force=True
    )
    assert forced.evaluation_set("test").spec.info["forced_test_subset"] is True
    for f in folder.glob("testall_*"):
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match="Found test_ims.npy but no testall"):
        COCODataModule(root=str(tmp_path), feature_source="precomp").setup()


# -- butd: TERAN per-image features -------------------------------------------------------------------


def test_coco_butd_regions_boxes_and_captions(tmp_path: Path) -> None:
    fx.write_coco_butd(tmp_path)
    dm = COCODataModule(root=str(tmp_path), feature_source="butd", batch_size=6)
    batch = next(iter(dm.train_dataloader()))
    assert batch.visual.regions.shape == (6, fx.REGIONS, fx.DIM)
    train_order = [0, 7, 2]  # coco_train_ids then coco_restval_ids
    for regions, boxes, label, text in zip(
        batch.visual.regions, batch.visual.boxes, batch.label, batch.text.raw, strict=True
    ):
        i = train_order[int(label)]
        assert float(regions[0, 0]) == fx.cocoid(i) and image_of(text) == i
        assert boxes.tolist() == [[0, 0, 1, 1], [0, 0, 0.5, 1], [0, 0, 1, 0.5]]
    stats = dm.check()
    assert stats["train"]["images"] == 3 and stats["test"]["captions"] == 50
    assert (
        COCODataModule(root=str(tmp_path), feature_source="butd", caption_policy="all").check()["test"][
            "captions"
        ]
        == 51
    )
    info = dm.evaluation_set("test").spec.info
    assert info["boxes"] is True and "relevances" not in info


def test_coco_butd_missing_feature_file(tmp_path: Path) -> None:
    base = fx.write_coco_butd(tmp_path)
    att = base / "features_36" / "bu_att" / f"{fx.cocoid(3)}.npz"
    att.unlink()
    with pytest.raises(MissingFilesError, match=rf"(?s)\[test\]: 1 of 20 .*{att.name}"):
        COCODataModule(root=str(tmp_path), feature_source="butd").setup()
    dm = COCODataModule(root=str(tmp_path), feature_source="butd", skip_missing=True)
    assert dm.check()["test"]["gallery"] == 9 and dm.check()["test"]["missing"] == 1
    assert dm.loaded.missing["test"] == [str(att)]


def test_coco_butd_unknown_caption_id(tmp_path: Path) -> None:
    base = fx.write_coco_butd(tmp_path)
    np.save(base / "annotations" / "coco_dev_ids.npy", np.array([4000, 99], dtype=np.int64))
    with pytest.raises(DatasetFormatError, match=r"coco_dev_ids.npy, position 1: caption id 99 is not in"):
        COCODataModule(root=str(tmp_path), feature_source="butd").setup()


def test_relevances_raw_memmap(tmp_path: Path) -> None:
    base = fx.write_coco_butd(tmp_path)
    path = base / "relevances" / "coco-test-rougeL.npy"
    written = fx.write_relevance(path, 50, 10)
    dm = COCODataModule(root=str(tmp_path), feature_source="butd")
    assert dm.evaluation_set("test").spec.info["relevances"] == {"rougeL": str(path)}
    rel = load_relevances(path, 50, 10)
    assert isinstance(rel, np.memmap) and np.array_equal(rel, written)
    np.save(path, written)  # with an .npy header: not TERAN's format
    with pytest.raises(DatasetFormatError, match="has an .npy header"):
        load_relevances(path, 50, 10)


def test_f30k_butd_sizes_cached_from_headers(tmp_path: Path) -> None:
    base = fx.write_f30k_butd(tmp_path)
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="butd")
    item = dm.loaded.eval_sets["test"].gallery[1]  # Karpathy image 4
    assert float(item["regions"][0, 0]) == 4.0
    assert item["boxes"].tolist() == [[0, 0, 1, 1], [0, 0, 0.5, 1], [0, 0, 1, 0.5]]
    cache = json.loads((base / "images" / "sizes.json").read_text())
    assert cache["img4.jpg"] == list(fx.image_size(4)) and len(cache) == len(fx.F30K_SPLITS)


def test_f30k_butd_sizes_pkl_needs_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = fx.write_f30k_butd(tmp_path, images=False)
    with pytest.raises(DatasetError, match="neither the raw images nor a sizes file"):
        Flickr30KDataModule(root=str(tmp_path), feature_source="butd").setup()
    sizes = [fx.image_size(i) for i in range(len(fx.F30K_SPLITS))]
    (base / "images").mkdir()
    (base / "images" / "sizes.pkl").write_bytes(pickle.dumps(sizes))

    def no_unpickling(data: bytes) -> object:
        raise AssertionError("sizes.pkl was unpickled without trust_sizes_pkl=True")

    with monkeypatch.context() as m:
        m.setattr(itm_readers.pickle, "loads", no_unpickling)
        with pytest.raises(DatasetError, match=r"(?s)not read by default.*trust_sizes_pkl=True"):
            Flickr30KDataModule(root=str(tmp_path), feature_source="butd").setup()
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="butd", trust_sizes_pkl=True)
    assert dm.loaded.eval_sets["test"].gallery[0]["boxes"][0].tolist() == [0, 0, 1, 1]
    assert json.loads((base / "images" / "sizes.json").read_text())["img1.jpg"] == list(fx.image_size(1))


# -- quirks of the real files -------------------------------------------------------------------------


def quirk_counts(dm) -> dict[str, dict[str, int]]:
    return {s: {k: v["count"] for k, v in q.items()} for s, q in dm.loaded.quirks.items()}


def test_clean_files_report_only_the_six_caption_image(tmp_path: Path) -> None:
    fx.write_f30k_images(tmp_path)
    fx.write_coco_images(tmp_path)
    f30k = Flickr30KDataModule(root=str(tmp_path))
    assert quirk_counts(f30k) == {"val": {"more_than_5_captions": 1}}  # images[3] is a val image in F30K
    coco = COCODataModule(root=str(tmp_path))
    assert quirk_counts(coco) == {"test": {"more_than_5_captions": 1}}  # image 3: six sentences, as in COCO
    assert coco.loaded.quirks["test"]["more_than_5_captions"]["examples"][0]["where"] == "images[3]"


def karpathy_writer(source: str, dataset: str):
    """(writer, DataModule, extra kwargs, Karpathy JSON path under root) of one Karpathy-based input."""
    if source == "butd":
        return fx.write_f30k_butd, Flickr30KDataModule, {"feature_source": "butd"}, "Flickr30K/annotations"
    if dataset == "coco":
        return fx.write_coco_images, COCODataModule, {}, "COCO"
    return fx.write_f30k_images, Flickr30KDataModule, {}, "Flickr30K"


def five(i: int) -> list[str]:
    return [fx.caption(i, k) for k in range(5)]


# kind -> (split reported under, count, training captions of images[2] as the official loaders read them)
KARPATHY_EXPECT: dict[str, tuple[str, int, list[str] | None]] = {
    "raw_whitespace": ("train", 1, five(2)),
    "empty_caption": ("train", 1, [fx.caption(2, 0), "", *five(2)[2:]]),
    "non_ascii_caption": ("train", 1, [fx.caption(2, 0), fx.caption(2, 1) + " café", *five(2)[2:]]),
    "more_than_5_captions": ("train", 1, five(2)),  # first5
    "fewer_than_5_captions": ("train", 1, five(2)[:3]),
    "no_captions": ("train", 1, None),  # never seen by the official loaders
    "duplicate_image": ("train", 1, five(2)),  # kept as a separate image
    "unknown_split": ("all", 1, None),  # in no split
}


@pytest.mark.parametrize("kind", fx.KARPATHY_QUIRKS)
@pytest.mark.parametrize(("source", "dataset"), [("images", "f30k"), ("images", "coco"), ("butd", "f30k")])
def test_karpathy_quirks_read_as_vsepp_and_teran(
    tmp_path: Path, source: str, dataset: str, kind: str
) -> None:
    writer, module, kwargs, folder = karpathy_writer(source, dataset)
    writer(tmp_path)
    json_path = next((tmp_path / folder).glob("dataset_*.json"))
    fx.inject_karpathy_quirk(json_path, kind)
    dm = module(root=str(tmp_path), **kwargs)
    split, count, captions = KARPATHY_EXPECT[kind]
    assert quirk_counts(dm)[split][kind] == count
    assert dm.loaded.quirks[split][kind]["examples"][0]["file"] == str(json_path)
    train = dm.loaded.train
    if captions is None:
        assert dm.check()["train"]["labels"] == 2 and all(image_of(c) != 2 for c in train.captions)
    else:  # images[2] is the second training image in file order of both datasets
        assert [c for c, lab in zip(train.captions, train.labels, strict=True) if lab == 1] == captions
        assert dm.check()["train"]["labels"] == 3
    with pytest.raises(DatasetQuirkError, match=re.escape(str(json_path))):
        module(root=str(tmp_path), strict=True, **kwargs).setup()


def test_caption_policy_all_keeps_extra_captions(tmp_path: Path) -> None:
    base = fx.write_f30k_images(tmp_path)
    fx.inject_karpathy_quirk(base / "dataset_flickr30k.json", "more_than_5_captions")
    dm = Flickr30KDataModule(root=str(tmp_path), caption_policy="all")
    assert dm.check()["train"]["captions"] == 17 and quirk_counts(dm)["train"]["more_than_5_captions"] == 1


PRECOMP_LINE3 = {  # kind -> test caption 3 as SCAN reads it (None: unchanged)
    "raw_whitespace": None,
    "empty_caption": "",
    "non_ascii_caption": "{} café",
    "ids_mismatch": None,
    "trailing_blank_lines": None,
}


@pytest.mark.parametrize("kind", fx.PRECOMP_QUIRKS)
@pytest.mark.parametrize("dataset", ["f30k", "coco"])
def test_precomp_quirks_read_as_scan(tmp_path: Path, dataset: str, kind: str) -> None:
    module, test_file = (Flickr30KDataModule, "test") if dataset == "f30k" else (COCODataModule, "testall")
    folder = fx.write_precomp(tmp_path, dataset, {"train": 3, "dev": 2, "test": 2, "testall": 2})
    fx.inject_precomp_quirk(folder, test_file, kind)
    dm = module(root=str(tmp_path), feature_source="precomp")
    count = 2 if kind == "trailing_blank_lines" else 1
    assert quirk_counts(dm) == {"test": {kind: count}}
    original = f"{test_file} image 0 caption 2"
    line3 = PRECOMP_LINE3[kind]
    queries = dm.loaded.eval_sets["test"].queries.captions
    assert len(queries) == 10 and queries[2] == (original if line3 is None else line3.format(original))
    assert dm.evaluation_set("test").spec.gallery_labels.tolist() == [0] * 5 + [1] * 5
    with pytest.raises(DatasetQuirkError, match=test_file):
        module(root=str(tmp_path), feature_source="precomp", strict=True).setup()


def test_precomp_ids_file_is_optional_and_extra_caption_lines_still_an_error(tmp_path: Path) -> None:
    folder = fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2})
    (folder / "dev_ids.txt").unlink()
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="precomp")
    assert quirk_counts(dm) == {"val": {"ids_mismatch": 1}}
    assert dm.loaded.quirks["val"]["ids_mismatch"]["examples"][0]["value"] == "'absent for 2 images'"
    (folder / "test_caps.txt").write_text("a\n" * 11, encoding="utf-8")  # not blank: unusable, not a quirk
    with pytest.raises(DatasetFormatError, match=r"test_caps.txt: 11 lines for 2 images"):
        Flickr30KDataModule(root=str(tmp_path), feature_source="precomp").setup()


COCO_BUTD_CAPTIONS = {  # kind -> training captions of fixture image 0 as TERAN reads them
    "raw_whitespace": five(0),
    "empty_caption": [fx.caption(0, 0), "", *five(0)[2:]],
    "non_ascii_caption": [fx.caption(0, 0), fx.caption(0, 1) + " café", *five(0)[2:]],
    "fewer_than_5_captions": five(0)[1:],
    "duplicate_caption_id": [*five(0), fx.caption(0, 0)],  # both kept: six captions for image 0
}


@pytest.mark.parametrize("kind", fx.COCO_BUTD_QUIRKS)
def test_coco_butd_quirks_read_as_teran(tmp_path: Path, kind: str) -> None:
    base = fx.write_coco_butd(tmp_path)
    fx.inject_coco_butd_quirk(base, kind)
    dm = COCODataModule(root=str(tmp_path), feature_source="butd", caption_policy="all")
    counts = quirk_counts(dm)
    assert counts["train"][kind] == 1
    if kind == "duplicate_caption_id":
        assert counts["train"]["more_than_5_captions"] == 1
    train = dm.loaded.train
    assert [c for c, lab in zip(train.captions, train.labels, strict=True) if lab == 0] == COCO_BUTD_CAPTIONS[
        kind
    ]
    with pytest.raises(DatasetQuirkError):
        COCODataModule(root=str(tmp_path), feature_source="butd", strict=True).setup()
