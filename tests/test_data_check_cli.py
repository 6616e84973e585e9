"""`python -m fgbench data check NAME --root PATH --json OUT` on every official-format fixture."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from fgbench.cli import main
from fgbench.data.module import LoadedData, RetrievalDataModule
from fgbench.data.validation import QuirkKind
from fgbench.registry import DATAMODULES

from fixtures.composed import write_cirr, write_fashion200k, write_fashioniq
from fixtures.itm import write_coco_images, write_f30k_images
from fixtures.person import write_cuhk, write_icfg, write_rstpreid
from fixtures.reed import write_cub, write_flowers

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
REPORT_KEYS = {
    "dataset",
    "root",
    "options",
    "images_verified",
    "rows",
    "quirks",
    "n_missing",
    "n_unreadable",
    "missing",
    "unreadable",
    "warnings",
}


def run_check(root: Path, name: str, *extra: str) -> tuple[int, dict]:
    out = root / "check.json"
    rc = main(["data", "check", name, "--root", str(root), "--json", str(out), *extra])
    return rc, json.loads(out.read_text())


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_data_check_reports_every_count_of_every_row(name: str, tmp_path: Path) -> None:
    WRITERS[name](tmp_path)
    rc, got = run_check(tmp_path, name)
    assert rc == 0
    assert set(got) == REPORT_KEYS and got["dataset"] == name and got["images_verified"] is False
    stats = DATAMODULES.get(name)(root=str(tmp_path), verify_images=False).check()
    assert list(got["rows"]) == list(stats)  # per-category rows (e.g. "val/dress") included, in order
    for row, counts in stats.items():
        found = got["rows"][row]["found"]
        assert {k: v for k, v in found.items() if k in counts} == {k: int(v) for k, v in counts.items()}
        assert found["missing"] == 0 and found["unreadable"] == 0


@pytest.mark.parametrize("name", ["rstpreid", "fashioniq", "cirr"])
def test_expected_counts_come_from_the_datamodule_by_row_name(name: str, tmp_path: Path) -> None:
    WRITERS[name](tmp_path)
    _, got = run_check(tmp_path, name)
    expected = DATAMODULES.get(name).expected
    compared = [row for row in got["rows"] if expected.get(row)]
    assert compared  # the check can fail: some rows do carry expected counts
    for row in compared:
        want = {k: v for k, v in expected[row].items() if v is not None}
        assert got["rows"][row]["expected"] == want


def test_data_check_rstpreid_counts_exactly(tmp_path: Path) -> None:
    write_rstpreid(tmp_path, n_train=4, n_val=2, n_test=3)  # 5 images x 2 captions per id
    rc, got = run_check(tmp_path, "rstpreid")
    assert rc == 0
    test = got["rows"]["test"]
    assert test["found"] | {"non_ascii_captions": 0, "repeated_captions": 0} == {
        "images": 15,
        "captions": 30,
        "labels": 3,
        "queries": 30,
        "gallery": 15,
        "missing": 0,
        "unreadable": 0,
        "non_ascii_captions": 0,
        "repeated_captions": 0,
    }
    assert test["expected"] == {
        "labels": 200,
        "images": 1000,
        "captions": 2000,
        "queries": 2000,
        "gallery": 1000,
    }
    assert "rstpreid [test]: expected 1000 images, found 15" in got["warnings"]


def test_each_warning_is_printed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rstpreid(tmp_path)
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    printed = cap.out + cap.err
    lines = [ln for ln in printed.splitlines() if "]: expected " in ln]
    assert len(lines) == 13  # 3 train + 5 val + 5 test counts differ from the full dataset's
    assert len(set(lines)) == len(lines)
    assert "expected 3701 labels, found" in cap.out and cap.err == ""


def test_data_check_counts_missing_images_and_exits_1(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    gone = fx.image(fx.split("test")[0])
    gone.unlink()
    rc, got = run_check(tmp_path, "rstpreid")
    assert rc == 1
    assert got["rows"]["test"]["found"]["missing"] == 1 and got["n_missing"]["test"] == 1
    assert got["missing"]["test"] == [str(gone)]


def test_data_check_missing_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path / "nope")]) == 2
    out = capsys.readouterr().err
    assert "data_captions.json" in out and "Traceback" not in out


def test_corrupt_image_passes_without_verify_and_is_reported_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = write_rstpreid(tmp_path)
    bad = fx.corrupt("val", 1)
    rc, got = run_check(tmp_path, "rstpreid")
    assert rc == 0 and got["n_unreadable"] == {} and "--verify-images" in capsys.readouterr().out
    rc, got = run_check(tmp_path, "rstpreid", "--verify-images")
    assert rc == 1 and got["images_verified"] is True
    assert got["n_unreadable"] == {"val": 1} and list(got["unreadable"]["val"]) == [str(bad)]
    assert "truncated" in got["unreadable"]["val"][str(bad)].lower()
    assert got["rows"]["val"]["found"]["unreadable"] == 1 and got["rows"]["val"]["found"]["missing"] == 0
    assert got["rows"]["val"]["found"]["gallery"] == got["rows"]["val"]["found"]["images"] - 1
    out = capsys.readouterr().out
    assert bad.name in out and "unreadable" in out


def test_corrupt_image_without_skip_missing_is_one_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = write_rstpreid(tmp_path)
    bad = fx.corrupt("train", 0)
    args = ["data", "check", "rstpreid", "--root", str(tmp_path), "--verify-images"]
    assert main([*args, "--set", "skip_missing=false"]) == 1
    out = capsys.readouterr().err
    assert "cannot be decoded" in out and bad.name in out and "Traceback" not in out


QUIRKS = (QuirkKind("odd_id", "an id given as a string", "int() of it", "read as int"),)


class QuirkyDataModule(RetrievalDataModule):
    name = "quirky"
    quirk_kinds = QUIRKS
    expected = {"test": {"images": 3, "gallery": None}}

    def load(self) -> LoadedData:
        for i in (2, 5):
            self.quirk("test", "odd_id", "ann.json", f"entry {i}", "id", str(i))
        return LoadedData(train=None, eval_sets={}, stats={"test": {"images": 2, "gallery": 2}})


@pytest.fixture
def quirky(monkeypatch: pytest.MonkeyPatch) -> None:
    DATAMODULES.list()  # import the plugins first, then add the toy module for this test only
    monkeypatch.setitem(DATAMODULES._entries, "quirky", QuirkyDataModule)


@pytest.mark.usefixtures("quirky")
def test_quirks_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, got = run_check(tmp_path, "quirky")
    assert rc == 0
    q = got["quirks"]["test"]["odd_id"]
    assert q["count"] == 2 and q["fgbench"] == "read as int"
    assert q["examples"][0] == {"file": "ann.json", "where": "entry 2", "field": "id", "value": "'2'"}
    assert got["rows"]["test"] == {
        "found": {"images": 2, "gallery": 2, "missing": 0, "unreadable": 0},
        "expected": {"images": 3},
    }
    out = capsys.readouterr().out
    assert "odd_id" in out and "ann.json, entry 2, field 'id'" in out and "2 / 3" in out
    assert not any("odd_id" in w for w in got["warnings"])  # in the quirks table, not again as a warning


@pytest.mark.usefixtures("quirky")
def test_strict_via_set_turns_a_quirk_into_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "check.json"
    args = [
        "data",
        "check",
        "quirky",
        "--root",
        str(tmp_path),
        "--json",
        str(out_json),
        "--set",
        "strict=true",
    ]
    assert main(args) == 2
    out = capsys.readouterr().err
    assert "ann.json, entry 2, field 'id'" in out and "strict=True" in out and "Traceback" not in out
    assert not out_json.exists()  # nothing half-written


def test_unknown_set_key_is_one_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_rstpreid(tmp_path)
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path), "--set", "smaple=pk"]) == 2
    out = capsys.readouterr().err
    assert "--set 'smaple'" in out and "sampler" in out and "Traceback" not in out
    assert main(["data", "check", "rstpreid", "--root", str(tmp_path), "--set", "sampler"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_unknown_evaluation_split_names_the_available_ones(tmp_path: Path) -> None:
    write_rstpreid(tmp_path)
    dm = DATAMODULES.get("rstpreid")(root=str(tmp_path), test_split="tset")
    with pytest.raises(KeyError, match=r"no evaluation split 'tset'; available: \['test', 'val'\]"):
        dm.test_dataloader()
