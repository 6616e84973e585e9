"""Flickr30K / COCO DataModules on tiny fixtures in the official formats (DATASETS.md §3, PROTOCOLS.md §3)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from datamodules.itm import COCODataModule, Flickr30KDataModule, load_relevances
from datamodules.itm import readers as itm_readers
from fgbench.data.validation import DatasetError, DatasetFormatError, DatasetNotFoundError, MissingFilesError
from fgbench.registry import DATAMODULES
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
    spec = dm.eval_spec("test")
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
    assert dm.eval_spec("val").protocol == "f30k_1k"


def test_coco_train_has_restval_in_file_order_and_caption_policies(tmp_path: Path) -> None:
    fx.write_coco_images(tmp_path)
    dm = COCODataModule(root=str(tmp_path))
    train = dm.loaded.train
    assert [image_of(train.captions[j]) for j in range(0, 15, 5)] == COCO["train"]
    assert dm.check()["test"]["captions"] == 50
    dm_all = COCODataModule(root=str(tmp_path), caption_policy="all")
    spec = dm_all.eval_spec("test")
    assert dm_all.check()["test"]["captions"] == 51
    assert spec.info["caption_policy"] == "all"
    assert spec.gallery_labels.tolist()[:11] == [0] * 5 + [1] * 6  # image 3 has six sentences
    assert any("expected 25010 captions, found 51" in w for w in dm_all.loaded.warnings)


def test_coco_1k_5fold_folds_follow_file_order(tmp_path: Path) -> None:
    fx.write_coco_images(tmp_path)
    dm = COCODataModule(root=str(tmp_path), coco_protocol="coco_1k_5fold")
    spec = dm.eval_spec("test")
    assert spec.protocol == "coco_1k_5fold" and spec.info["protocol"] == "coco_1k_5fold"
    assert spec.query_labels.tolist() == list(range(10))
    captions = dm.loaded.eval_sets["test"].queries.captions
    for f in range(5):  # fold f = images 2f, 2f+1 (file order) with captions 10f .. 10f+9
        cols = torch.nonzero(torch.isin(spec.gallery_labels, torch.arange(2 * f, 2 * f + 2))).squeeze(1)
        assert cols.tolist() == list(range(10 * f, 10 * f + 10))
        assert {image_of(captions[c]) for c in cols} == set(COCO["test"][2 * f : 2 * f + 2])
    assert COCODataModule(root=str(tmp_path)).eval_spec("test").protocol == "coco_5k"


def test_val_uses_first_captions(tmp_path: Path) -> None:
    fx.write_coco_images(tmp_path)
    dm = COCODataModule(root=str(tmp_path), val_captions=5)
    spec = dm.eval_spec("val")
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
    dm.test_dataloader()  # attaches the eval transform
    item = dm.loaded.eval_sets["test"].gallery[1]  # Karpathy image 4
    assert item["pixels"].shape == (3, 64, 64)
    assert item["boxes"].tolist() == [[0, 0, 1, 1], [0, 0, 0.5, 1], [0, 0, 1, 0.5]]
    assert dm.eval_spec("test").info["boxes"] is True
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
    for i in (1, 0):  # a test image and a train image
        (base / "flickr30k-images" / f"img{i}.jpg").unlink()
    with pytest.raises(MissingFilesError, match=r"(?s)\[train\]: 1 of 3 .*img0.jpg.*skip_missing=True"):
        Flickr30KDataModule(root=str(tmp_path)).setup()
    dm = Flickr30KDataModule(root=str(tmp_path), skip_missing=True)
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
    spec = dm.eval_spec("test")
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
        (lambda e: e.update(split="dev"), r"images\[2\], field 'split': unknown split 'dev'"),
        (
            lambda e: e["sentences"][1].update(raw="  "),
            r"images\[2\].sentences\[1\], field 'raw': empty value",
        ),
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
    spec = dm.eval_spec("val")
    assert spec.info["file_split"] == "dev" and spec.info["boxes"] is False
    assert spec.gallery_labels.tolist() == [0] * 5 + [1] * 5


def test_precomp_one_caption_per_image(tmp_path: Path) -> None:
    fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2}, per_image=1)
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="precomp")
    assert dm.eval_spec("test").gallery_labels.tolist() == [0, 1]


def test_precomp_caption_count_mismatch(tmp_path: Path) -> None:
    folder = fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2})
    (folder / "test_caps.txt").write_text("a\n" * 7, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"test_caps.txt: 7 lines for 2 images in .*test_ims.npy"):
        Flickr30KDataModule(root=str(tmp_path), feature_source="precomp").setup()


def test_precomp_ids_line_count_mismatch(tmp_path: Path) -> None:
    folder = fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2})
    (folder / "dev_ids.txt").write_text("1\n", encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"dev_ids.txt: 1 lines for 2 images"):
        Flickr30KDataModule(root=str(tmp_path), feature_source="precomp").setup()


def test_coco_precomp_test_vs_testall(tmp_path: Path) -> None:
    folder = fx.write_precomp(tmp_path, "coco", {"train": 3, "dev": 2, "test": 2, "testall": 10})
    dm = COCODataModule(root=str(tmp_path), feature_source="precomp", coco_protocol="coco_1k_5fold")
    assert dm.check()["test"]["gallery"] == 10
    assert dm.eval_spec("test").info["file_split"] == "testall"
    with pytest.raises(DatasetError, match="not the 1K protocol"):
        COCODataModule(root=str(tmp_path), feature_source="precomp", precomp_test_file="test").setup()
    forced = COCODataModule(
        root=str(tmp_path), feature_source="precomp", precomp_test_file="test", force=True
    )
    assert forced.eval_spec("test").info["forced_test_subset"] is True
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
    assert dm.eval_spec("test").info["boxes"] is True and "relevances" not in dm.eval_spec("test").info


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
    assert dm.eval_spec("test").info["relevances"] == {"rougeL": str(path)}
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
