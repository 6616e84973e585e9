"""CUB and Flowers DataModules on tiny datasets in Reed et al.'s layout."""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import pytest

from datamodules.reed import CUBDataModule, FlowersDataModule
from fgbench.data.batches import PairBatch
from fgbench.data.validation import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetQuirkError,
    MissingFilesError,
)
from fgbench.registry import DATAMODULES
from tests.fixtures import fails_then_skips
from tests.fixtures.reed import (
    QUIRK_COUNTS,
    QUIRK_KINDS,
    captions_of,
    inject_caption_quirk,
    write_cub,
    write_flowers,
)

# default fixture: classes 1-3 train, 4 val, 5-6 test; 2 images per class, 10 captions per image


def stats(n_classes: int, images_per_class: int = 2, train: bool = False) -> dict[str, int]:
    n = n_classes * images_per_class
    return {
        "images": n,
        "captions": 10 * n,
        "labels": n_classes,
        "queries": 10 * n,
        "gallery": 0 if train else n,
        "missing": 0,
    }


def test_registered_by_name() -> None:
    assert DATAMODULES.get("cub") is CUBDataModule and DATAMODULES.get("flowers") is FlowersDataModule


def test_cub_default_trains_on_trainval_tests_on_test(tmp_path: Path) -> None:
    fx = write_cub(tmp_path)
    dm = CUBDataModule(root=str(tmp_path), batch_size=8)
    assert dm.check() == {"train": stats(4, train=True), "test": stats(2)}  # *.t7, manifest.txt ignored
    assert dm.num_classes == 4
    ds = dm.loaded.train
    assert ds is not None
    assert ds.labels == [i // 20 for i in range(80)]  # rank among sorted trainval classes
    assert ds.image_index == [i // 10 for i in range(80)]
    assert ds.captions[0] == captions_of(fx.classes["train"][0], fx.images[fx.classes["train"][0]][0].stem)[0]
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, PairBatch) and batch.visual.pixels is not None
    assert batch.visual.pixels.shape == (8, 3, 64, 64) and len(batch.text) == 8
    spec = dm.evaluation_set("test").spec
    assert spec.protocol == "class_reed"
    assert spec.gallery_labels.tolist() == [5, 5, 6, 6]  # class number of the folder name
    assert spec.query_labels is not None and spec.query_labels.tolist() == [5] * 20 + [6] * 20
    assert spec.info["classes"] == ["005.Bird_5", "006.Bird_6"] and spec.info["class_labels"] == [5, 6]
    with pytest.raises(RuntimeError, match="tuning=True"):
        dm.val_dataloader()


def test_tuning_trains_on_train_validates_on_val(tmp_path: Path) -> None:
    write_flowers(tmp_path)
    dm = FlowersDataModule(root=str(tmp_path), tuning=True)
    assert dm.check() == {"train": stats(3, train=True), "val": stats(1), "test": stats(2)}
    assert dm.evaluation_set("val").spec.gallery_labels.tolist() == [4, 4]
    assert len(dm.val_dataloader()) == 2
    assert any("flowers [train]: expected 62 labels, found 3" == w for w in dm.loaded.warnings)


def test_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"<root>/Flowers/102flowers/jpg/image_XXXXX\.jpg"):
        FlowersDataModule(root=str(tmp_path)).setup()


@pytest.mark.parametrize(
    ("dataset", "listed", "lines", "message"),
    [
        (
            "cub",
            "testclasses",
            "004.Bird_4\n005.Bird_5\n006.Bird_6\n",
            r"testclasses\.txt: classes also in valclasses\.txt",
        ),
        ("cub", "testclasses", "005.Bird_5\n", r"allclasses\.txt: differs from train ∪ val ∪ test"),
        (
            "flowers",
            "valclasses",
            "class_00004\n\nflower 4\n",
            r"valclasses\.txt, line 3: unparsable class name",
        ),
    ],
    ids=["disjoint", "cover_allclasses", "line_must_parse"],
)
def test_bad_class_list(tmp_path: Path, dataset: str, listed: str, lines: str, message: str) -> None:
    write, module = {"cub": (write_cub, CUBDataModule), "flowers": (write_flowers, FlowersDataModule)}[
        dataset
    ]
    write(tmp_path).list_file(listed).write_text(lines, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=message):
        module(root=str(tmp_path)).setup()


def test_listed_class_needs_a_folder(tmp_path: Path) -> None:
    fx = write_cub(tmp_path)
    for f in (fx.text_dir / "text_c10" / "006.Bird_6").iterdir():
        f.unlink()
    (fx.text_dir / "text_c10" / "006.Bird_6").rmdir()
    with pytest.raises(DatasetNotFoundError, match="1 listed classes have no folder.*006.Bird_6"):
        CUBDataModule(root=str(tmp_path)).setup()


DATAMODULE = {"cub": (write_cub, CUBDataModule), "flowers": (write_flowers, FlowersDataModule)}


def test_clean_files_report_no_quirks(tmp_path: Path) -> None:
    write_cub(tmp_path)
    assert CUBDataModule(root=str(tmp_path)).loaded.quirks == {}


@pytest.mark.parametrize("kind", QUIRK_KINDS)
@pytest.mark.parametrize("dataset", sorted(DATAMODULE))
def test_each_caption_quirk_is_read_as_attngan_reads_it(tmp_path: Path, dataset: str, kind: str) -> None:
    writer, module = DATAMODULE[dataset]
    fx = writer(tmp_path)
    cls = fx.classes["test"][0]
    expected = inject_caption_quirk(fx, kind, cls)
    dm = module(root=str(tmp_path))
    test = dm.loaded.eval_sets["test"].queries.captions
    assert test[: len(expected)] == expected  # the image's captions, as the reference reader yields them
    assert len(test) == len(expected) + 30 and dm.check()["test"]["gallery"] == 4
    report = dm.loaded.quirks["test"][kind]
    assert report["count"] == QUIRK_COUNTS.get(kind, 1) and report["examples"][0]["file"] == str(
        fx.captions[cls][0]
    )
    assert report["fgbench"] == next(k.fgbench for k in module.quirk_kinds if k.kind == kind)
    assert "train" not in dm.loaded.quirks
    with pytest.raises(DatasetQuirkError, match=re.escape(str(fx.captions[cls][0]))):
        module(root=str(tmp_path), strict=True).setup()


def test_all_caption_quirks_counted_together(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = write_flowers(tmp_path)
    a, b = fx.classes["test"]
    inject_caption_quirk(fx, "blank_line", a, 0)
    inject_caption_quirk(fx, "fewer_than_10_captions", a, 1)
    inject_caption_quirk(fx, "non_ascii_caption", b, 0)
    inject_caption_quirk(fx, "not_utf8", b, 1)  # its U+FFFD is also non-ASCII
    fx.captions[fx.classes["train"][0]][0].write_text("", encoding="utf-8")  # no caption at all
    with caplog.at_level(logging.WARNING, logger="fgbench.data"):
        dm = FlowersDataModule(root=str(tmp_path))
        stats = dm.check()
    counts = {s: {k: v["count"] for k, v in q.items()} for s, q in dm.loaded.quirks.items()}
    assert counts == {
        "test": {"blank_line": 2, "fewer_than_10_captions": 1, "non_ascii_caption": 2, "not_utf8": 1},
        "train": {"fewer_than_10_captions": 1},
    }
    assert dm.loaded.quirks["train"]["fewer_than_10_captions"]["examples"][0]["value"] == "0"
    assert stats["test"]["captions"] == 33 and stats["test"]["gallery"] == 4
    assert stats["train"]["images"] == 8 and stats["train"]["captions"] == 70  # the image stays, no pairs
    assert "flowers [test]: 2 x blank_line" in caplog.text


def test_caption_without_image_and_image_without_caption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fx = write_cub(tmp_path)
    lost_image = fx.images["005.Bird_5"][0]
    lost_text = fx.captions["006.Bird_6"][1]
    make = functools.partial(CUBDataModule, root=str(tmp_path))
    dm, message = fails_then_skips(make, [lost_image, lost_text], r"test\]: 2 of 4")
    assert str(lost_image) in message and str(lost_text) in message
    with caplog.at_level(logging.WARNING, logger="fgbench.data"):
        st = dm.check()["test"]
    assert "skip_missing=True drops 2 of 4" in caplog.text
    assert st == {"images": 4, "captions": 30, "labels": 2, "queries": 20, "gallery": 2, "missing": 2}
    spec = dm.evaluation_set("test").spec
    assert spec.info["n_missing"] == 2 and spec.gallery_labels.tolist() == [5, 6]


def test_flowers_image_without_any_caption_file(tmp_path: Path) -> None:
    fx = write_flowers(tmp_path)
    stray = fx.images["class_00001"][0].with_name("image_09999.jpg")
    stray.write_bytes(fx.images["class_00001"][0].read_bytes())
    with pytest.raises(
        MissingFilesError, match=r"(?s)flowers \[all\]: 1 of 13.*text_c10/\*/image_09999\.txt"
    ):
        FlowersDataModule(root=str(tmp_path)).setup()
    dm = FlowersDataModule(root=str(tmp_path), skip_missing=True)
    assert dm.check()["test"]["gallery"] == 4
    assert dm.loaded.missing["all"] == [str(fx.text_dir / "text_c10" / "*" / "image_09999.txt")]
