"""experiments.leaderboard on hand-made result.json files: runs.csv, mean ± sample std (ddof=1) over seeds,
n and the missing-seed flag, paper numbers and deltas only where they are comparable, atomic writes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments import leaderboard as lb
from fgbench.registry import DATAMODULES, METHODS
from fgbench.results import write_result

PUBLISHED = """task,dataset,split,protocol,method,backbone,metric,value,source,verified
person_retrieval,RSTPReid,test,person_t2i,IRRA,ViT,R1,60.00,a paper,yes
person_retrieval,RSTPReid,test,person_t2i,IRRA,ViT,mAP,40.00,a survey,no
person_retrieval,RSTPReid,test,person_t2i,CLIP (fine-tuned baseline),ViT,R1,45.00,a paper,yes
person_retrieval,RSTPReid,test,person_t2i_noise20_best,IRRA,ViT,R5,99.00,a paper,yes
composed_retrieval,CIRR,test1,cirr,TIRG,RN,avg,30.00,a survey,no
person_retrieval,RSTPReid,test,person_t2i,Some other method,ViT,R1,70.00,a paper,yes
"""


def person_metrics(r1: float) -> dict[str, float]:
    return {"R1": r1, "R5": r1 + 20, "R10": r1 + 30, "mAP": r1 - 10, "mINP": r1 - 20}


def write_run(
    root: Path,
    dataset: str,
    method: str,
    profile: str,
    seed: int,
    metrics: dict[str, float],
    protocol: str = "person_t2i",
    split: str = "test",
    chash: str | None = None,
    mtime: float | None = None,
) -> Path:
    chash = chash or f"{abs(hash((dataset, method, profile, seed))) % 16**12:012x}"
    directory = root / dataset / method / profile / f"seed{seed}-{chash}"
    record: dict[str, Any] = {
        "method": method,
        "dataset": dataset,
        "profile": profile,
        "seed": seed,
        "config_hash": chash,
        "run_dir": str(directory),
        "split": split,
        "metrics": metrics,
        "details": {"protocol": protocol, "n_query": 10, "n_gallery": 5},
        "provenance_note": "port of somewhere",
        "device": "cpu",
        "precision": "32-true",
        "wall_time_s": 1.5,
        "git_commit": "abc",
        "git_dirty": False,
        "versions": {"torch": "2"},
    }
    path = write_result(directory / "result.json", record)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def built(tmp_path: Path) -> tuple[lb.BuildReport, Path]:
    runs, out = tmp_path / "runs", tmp_path / "results"
    out.mkdir()
    (out / "published.csv").write_text(PUBLISHED)
    for seed, r1 in enumerate((50.0, 52.0, 54.0)):
        write_run(runs, "rstpreid", "irra", "paper", seed, person_metrics(r1))
    for seed, r1 in enumerate((40.0, 44.0)):
        write_run(runs, "rstpreid", "clip_ft", "paper", seed, person_metrics(r1))
    write_run(runs, "rstpreid", "irra", "tiny", 0, person_metrics(10.0))
    # seed 0 of irra/tiny run again later with another config: only the newer one counts
    write_run(runs, "rstpreid", "irra", "tiny", 0, person_metrics(12.0), chash="0" * 12, mtime=1.0)
    write_run(runs, "synth-person", "irra", "paper", 0, person_metrics(30.0))
    write_run(runs, "cirr", "tirg", "paper", 0, {"avg": 25.0, "R5": 30.0, "Rsub1": 20.0}, "cirr", "val")
    (runs / "broken" / "x").mkdir(parents=True)
    (runs / "broken" / "x" / "result.json").write_text("{not json")
    return lb.build(runs, out), out


def row(board: lb.Board, method: str, profile: str = "paper") -> pd.Series:
    t = board.table
    return t[(t["method"] == method) & (t["profile"] == profile)].iloc[0]


def test_runs_csv_has_one_row_per_run_and_metric(built: tuple[lb.BuildReport, Path]) -> None:
    report, out = built
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns) == list(lb.RUN_COLUMNS)
    assert report.runs == 9 and len(runs) == 8 * 5 + 3  # 8 person runs x 5 metrics + the CIRR run
    assert report.skipped and "broken" in report.skipped[0]
    irra = runs[(runs["method"] == "irra") & (runs["profile"] == "paper") & (runs["dataset"] == "rstpreid")]
    assert sorted(irra[irra["metric"] == "R1"]["value"]) == [50.0, 52.0, 54.0]
    assert set(runs["protocol"]) == {"person_t2i", "cirr"}


def test_mean_sample_std_and_n(built: tuple[lb.BuildReport, Path]) -> None:
    report, _ = built
    (board,) = report.boards["rstpreid"]
    irra = row(board, "irra")
    assert irra["n"] == 3 and not irra["flagged"]
    assert irra["R1_mean"] == pytest.approx(52.0)
    assert irra["R1_std"] == pytest.approx(2.0)  # ddof=1; the population std would be 1.633
    clip = row(board, "clip_ft")
    assert clip["n"] == 2 and clip["flagged"]
    assert clip["R1_std"] == pytest.approx(math.sqrt(8.0))


def test_single_seed_has_blank_std_and_repeated_seed_counts_once(built: tuple[lb.BuildReport, Path]) -> None:
    report, out = built
    (board,) = report.boards["rstpreid"]
    tiny = row(board, "irra", "tiny")
    assert tiny["n"] == 1 and math.isnan(tiny["R1_std"])
    assert tiny["R1_mean"] == pytest.approx(10.0)  # the newer of the two seed-0 runs
    assert board.set_aside == 1
    csv = pd.read_csv(out / "leaderboards" / "rstpreid.csv")
    tiny_csv = csv[(csv["method"] == "irra") & (csv["profile"] == "tiny")].iloc[0]
    assert pd.isna(tiny_csv["R1_std"])
    md = (out / "leaderboards" / "rstpreid.md").read_text()
    assert "| irra | tiny | n=1* | 10.00 |" in md
    assert "1 older run(s) of an already counted seed set aside" in md


def test_missing_seed_flag_and_footnote(built: tuple[lb.BuildReport, Path]) -> None:
    _, out = built
    md = (out / "leaderboards" / "rstpreid.md").read_text()
    assert "| clip_ft | paper | n=2* |" in md
    assert "| irra | paper | n=3 |" in md
    assert "fewer seeds than the most complete row (n=3)" in md


def test_paper_number_and_delta(built: tuple[lb.BuildReport, Path]) -> None:
    report, out = built
    (board,) = report.boards["rstpreid"]
    irra = row(board, "irra")
    assert irra["R1_published"] == 60.0 and irra["R1_delta"] == pytest.approx(-8.0)
    assert irra["mAP_published"] == 40.0 and irra["mAP_delta"] == pytest.approx(2.0)
    assert math.isnan(irra["R5_published"])  # the R5 row is another protocol (noise20_best)
    assert row(board, "clip_ft")["R1_delta"] == pytest.approx(42.0 - 45.0)
    assert math.isnan(row(board, "irra", "tiny")["R1_published"])  # tiny is not the paper's model
    md = (out / "leaderboards" / "rstpreid.md").read_text()
    assert "52.00 ± 2.00 (paper 60.00, Δ -8.00)" in md
    assert "42.00 ± 2.00 (paper 40.00†, Δ +2.00)" in md  # unverified published number marked
    csv = pd.read_csv(out / "leaderboards" / "rstpreid.csv")
    assert csv.loc[(csv["method"] == "irra") & (csv["profile"] == "paper"), "R1_delta"].item() == -8.0


def test_synthetic_and_mismatched_split_are_never_compared(built: tuple[lb.BuildReport, Path]) -> None:
    report, out = built
    (synth,) = report.boards["synth-person"]
    assert math.isnan(row(synth, "irra")["R1_published"])
    md = (out / "leaderboards" / "synth-person.md").read_text()
    assert md.startswith("# synth-person (synthetic)") and "never compared" in md
    assert "(paper " not in md and "Δ" not in md
    (cirr,) = report.boards["cirr"]  # scored on val; the published TIRG number is test1
    assert (cirr.protocol, cirr.split) == ("cirr", "val")
    assert cirr.metrics == ["avg", "R5", "Rsub1"] and math.isnan(row(cirr, "tirg")["avg_published"])


def test_png_written_and_no_temp_files_left(built: tuple[lb.BuildReport, Path]) -> None:
    report, out = built
    boards = out / "leaderboards"
    for name in ("rstpreid", "synth-person", "cirr"):
        assert (boards / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (boards / f"{name}.csv").is_file() and (boards / f"{name}.md").is_file()
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".")) == []
    assert set(report.written) >= {out / "runs.csv", boards / "cirr.png"}


def test_failed_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "board.png"
    lb.atomic_write_bytes(target, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        lb.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["board.png"]


def test_empty_runs_root_writes_an_empty_runs_csv(tmp_path: Path) -> None:
    report = lb.build(tmp_path / "runs", tmp_path / "out")
    assert report.runs == 0 and report.boards == {}
    assert list(pd.read_csv(tmp_path / "out" / "runs.csv").columns) == list(lb.RUN_COLUMNS)


def test_real_published_csv_parses_and_the_mapping_names_exist() -> None:
    path = Path(__file__).resolve().parents[1] / "results" / "published.csv"
    raw = pd.read_csv(path)
    assert list(raw.columns) == list(lb.PUBLISHED_COLUMNS)
    assert raw["value"].dtype == float and set(raw["verified"]) == {"yes", "no"}
    methods, datasets = lb.published_names(METHODS), lb.published_names(DATAMODULES)
    assert set(methods) <= set(raw["method"]) and set(datasets) <= set(raw["dataset"])
    assert {"irra", "mmref", "teran", "vsepp", "clip4cir", "nsfse"} <= set(methods.values())  # one row each
    assert {"rstpreid", "f30k", "cirr", "fashion200k"} <= set(datasets.values())
    pub = lb.load_published(path)
    keys = ["dataset", "split", "protocol", "method", "metric"]
    assert not pub.duplicated(keys).any()  # one published number per measured cell
    irra = pub[(pub["method"] == "irra") & (pub["dataset"] == "rstpreid") & (pub["metric"] == "R1")]
    assert len(irra) == 1 and bool(irra["verified"].item())


def test_headline_of_an_unlisted_protocol_is_every_metric() -> None:
    assert lb.headline("new_protocol", ["b", "a"]) == ["a", "b"]
    assert lb.headline("cirr", [])[0] == "avg"


def test_variant_label_names_the_row() -> None:
    from experiments.leaderboard import method_label

    assert method_label({"method": "mmref", "variant": "no_refine"}) == "mmref[no_refine]"
    assert method_label({"method": "mmref", "variant": ""}) == "mmref"
    assert method_label({"method": "mmref"}) == "mmref"


def test_printed_table_keeps_the_variant(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for variant in ("", "no_refine"):
        rec = {
            "method": "mmref",
            "dataset": "synth-person",
            "profile": "tiny",
            "seed": 0,
            "variant": variant,
            "metrics": {"R1": 10.0},
            "details": {"protocol": "person_t2i"},
            "config_hash": variant or "x",
        }
        write_result(runs / (variant or "plain") / "result.json", rec)  # fmt: skip
    lb.print_boards(lb.build(runs, tmp_path / "out"))
    out = capsys.readouterr().out
    assert "mmref[no_refine]" in out and out.count("mmref") == 2
