"""`python -m fgbench data check NAME --root PATH --json OUT` on every official-format fixture."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fgbench.cli import main
from fgbench.registry import DATAMODULES

from fixtures.composed import write_cirr, write_fashion200k, write_fashioniq
from fixtures.itm import write_coco_images, write_f30k_images
from fixtures.person import write_cuhk, write_icfg, write_rstpreid
from fixtures.reed import write_cub, write_flowers

KEYS = ("images", "captions", "labels", "queries", "gallery", "missing")
WRITERS: dict[str, Callable[[Path], object]] = {
    "cuhk-pedes": write_cuhk,
    "icfg-pedes": write_icfg,
    "rstpreid": write_rstpreid,
    "cub": write_cub,
    "flowers": write_flowers,
    "f30k": write_f30k_images,
    "coco": write_coco_images,
    "fashioniq": write_fashioniq,
    "cirr": write_cirr,
    "fashion200k": write_fashion200k,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_data_check_reports_the_loader_counts(name: str, tmp_path: Path) -> None:
    WRITERS[name](tmp_path)
    out = tmp_path / "check.json"
    assert main(["data", "check", name, "--root", str(tmp_path), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    stats = DATAMODULES.get(name)(root=str(tmp_path)).check()
    assert got == {s: {k: int(c.get(k, 0)) for k in KEYS} for s, c in stats.items()}
    assert all(c["missing"] == 0 for c in got.values())


def test_data_check_rstpreid_counts_exactly(tmp_path: Path) -> None:
    write_rstpreid(tmp_path, n_train=4, n_val=2, n_test=3)  # 5 images x 2 captions per id
    out = tmp_path / "check.json"
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path), "--json", str(out)]) == 0
    test = json.loads(out.read_text())["test"]
    assert (test["images"], test["captions"], test["labels"], test["queries"], test["gallery"]) == (
        15,
        30,
        3,
        30,
        15,
    )


def test_data_check_counts_missing_images_and_exits_1(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    fx.image(fx.split("test")[0]).unlink()
    out = tmp_path / "check.json"
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path), "--json", str(out)]) == 1
    assert json.loads(out.read_text())["test"]["missing"] == 1


def test_data_check_missing_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path / "nope")]) == 2
    assert "data_captions.json" in capsys.readouterr().out


def test_unknown_evaluation_split_names_the_available_ones(tmp_path: Path) -> None:
    write_rstpreid(tmp_path)
    dm = DATAMODULES.get("rstpreid")(root=str(tmp_path), test_split="tset")
    with pytest.raises(KeyError, match=r"no evaluation split 'tset'; available: \['test', 'val'\]"):
        dm.test_dataloader()
