"""The DataModule contract: the one `DataInfo` a method builds from, and loaders that never change the
datasets a DataModule loaded (they serve configured copies)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from datamodules.itm import Flickr30KDataModule
from datamodules.person import RSTPReidDataModule
from fgbench.data.module import DataInfo
from tests.fixtures import itm as fx
from tests.fixtures.person import write_rstpreid


def test_info_of_an_image_dataset(tmp_path: Path) -> None:
    write_rstpreid(tmp_path)
    dm = RSTPReidDataModule(root=str(tmp_path))
    info = dm.info()
    assert info == DataInfo(
        name="rstpreid",
        tasks=frozenset({"text-image"}),
        family="person",
        feature_source="images",
        with_boxes=False,
        region_dim=None,
        val_split="val",
        test_split="test",
        train_texts=tuple(dm.train_texts()),
        num_classes=3,
        tiny_image_size=dm.tiny_image_size,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 4  # type: ignore[misc]


def test_info_of_precomputed_regions(tmp_path: Path) -> None:
    fx.write_precomp(tmp_path, "f30k", {"train": 3, "dev": 2, "test": 2})
    info = Flickr30KDataModule(root=str(tmp_path), feature_source="precomp").info()
    assert (info.family, info.feature_source, info.with_boxes, info.region_dim) == (
        "itm",
        "precomp",
        False,
        fx.DIM,
    )


def test_loaders_serve_copies_and_leave_the_loaded_datasets_alone(tmp_path: Path) -> None:
    write_rstpreid(tmp_path)
    dm = RSTPReidDataModule(root=str(tmp_path), batch_size=4)
    train, es = dm.loaded.train, dm.evaluation_set("val")
    assert train is not None
    served = dm.train_dataloader().dataset
    queries, gallery = (loader.dataset for loader in dm.val_dataloader())
    assert served is not train and served.transform is not None
    assert queries is not es.queries and gallery is not es.gallery and gallery.transform is not None
    assert train.transform is None and es.queries.transform is None and es.gallery.transform is None
    plain = dm.train_dataset(augment=False)  # the test transform over the training pairs (MMRef's init)
    assert plain.captions is train.captions and plain[0]["pixels"].shape == served[0]["pixels"].shape
