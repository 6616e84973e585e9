"""Unreadable images: refused before training, dropped and counted (skip_missing), named mid-run, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fgbench.data import images as I
from fgbench.data.datasets import ImageReadError
from fgbench.data.images import ImageCheck
from fgbench.data.validation import IMAGE_CHECK, UnreadableFilesError, find_missing
from fgbench.registry import DATAMODULES

from fixtures.composed import write_fashioniq
from fixtures.person import write_rstpreid


def rstpreid(root: Path, **kwargs: object):
    return DATAMODULES.get("rstpreid")(root=str(root), **kwargs)


def test_setup_refuses_an_unreadable_image_naming_it(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    bad = fx.corrupt("train", 2)
    with pytest.raises(
        UnreadableFilesError, match=r"rstpreid \[train\]: 1 of \d+ referenced images cannot be"
    ):
        rstpreid(tmp_path).setup()
    try:
        rstpreid(tmp_path).setup()
    except UnreadableFilesError as err:
        assert str(bad) in str(err) and err.unreadable.keys() == {str(bad)}


def test_skip_missing_drops_unreadable_images_and_records_them(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    fx.corrupt("train", 0)
    bad_test = fx.corrupt("test", 1)
    dm = rstpreid(tmp_path, skip_missing=True)
    full = rstpreid(tmp_path, verify_images=False).loaded
    data = dm.loaded
    n_caps = len(fx.split("train")[0]["captions"])
    assert len(data.train) == len(full.train) - n_caps  # type: ignore[arg-type]
    assert len(data.eval_sets["test"].gallery) == len(full.eval_sets["test"].gallery) - 1  # type: ignore[arg-type]
    assert data.record()["n_unreadable"] == {"train": 1, "test": 1}
    assert data.record()["n_missing"] == {"train": 0, "val": 0, "test": 0}
    assert data.stats["test"]["unreadable"] == 1 and data.stats["test"]["missing"] == 0
    assert list(data.unreadable["test"]) == [str(bad_test)]


def test_without_verification_a_decode_failure_names_the_file(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    bad = fx.corrupt("val", 0)
    dm = rstpreid(tmp_path, verify_images=False)
    gallery = dm.loaded.eval_sets["val"].gallery.with_transform(lambda img: img)  # type: ignore[arg-type]
    with pytest.raises(ImageReadError, match=rf"{bad}: cannot decode the image"):
        [gallery[i] for i in range(len(gallery))]  # type: ignore[arg-type]


def test_composed_loader_drops_unreadable_gallery_images_too(tmp_path: Path) -> None:
    write_fashioniq(tmp_path)
    dm = DATAMODULES.get("fashioniq")(root=str(tmp_path), verify_images=False)
    full = dm.loaded
    path = Path(next(iter(full.eval_sets["val"].gallery.store.paths)))  # type: ignore[attr-defined]
    corrupt_png = path.read_bytes()[:60]
    path.write_bytes(corrupt_png)
    data = DATAMODULES.get("fashioniq")(root=str(tmp_path), skip_missing=True).loaded
    assert data.record()["n_unreadable"].get("val") == 1
    assert len(data.eval_sets["val"].gallery) == len(full.eval_sets["val"].gallery) - 1  # type: ignore[arg-type]


def write_jpeg(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path, format="JPEG")
    return path


def test_only_images_are_decoded(tmp_path: Path) -> None:
    good, npy = write_jpeg(tmp_path / "a.jpg"), tmp_path / "f.npy"
    npy.write_bytes(b"not an image")
    broken = tmp_path / "b.png"
    broken.write_bytes(b"\x89PNG broken")
    check = ImageCheck("toy")
    token = IMAGE_CHECK.set(check)
    try:
        assert find_missing([good, npy, broken, tmp_path / "gone.jpg", good]) == [
            broken,
            tmp_path / "gone.jpg",
        ]
    finally:
        IMAGE_CHECK.reset(token)
    assert find_missing([good, npy, broken]) == []  # no check active: existence only


def test_verdicts_are_cached_per_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FGBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(I, "CACHE_MIN", 2)
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [write_jpeg(folder / f"{i}.jpg", i) for i in range(3)]
    decoded: list[Path] = []
    real = I.decode_error
    monkeypatch.setattr(I, "decode_error", lambda p: decoded.append(p) or real(p))

    def run() -> list[Path]:
        decoded.clear()
        token = IMAGE_CHECK.set(ImageCheck("toy"))
        try:
            assert find_missing(paths) == []
        finally:
            IMAGE_CHECK.reset(token)
        return sorted(decoded)

    assert run() == paths  # first time: every image decoded
    assert run() == []  # then only stat'ed
    write_jpeg(paths[1], seed=9)  # rewritten: new size or mtime, decoded again
    assert run() == [paths[1]]
    assert len(list((tmp_path / "cache" / "images").glob("*.json"))) == 1
