"""benchmarks/pairwise_cost.py on two trained tiny runs (racg, teran) of a MINI synth-scenes: it runs end to
end, times n x n scores, and its exact evaluation reproduces the run's own test metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType

import pytest
from test_method_racg import SCENES, SYNTH
from test_method_racg import cli_run as racg_run
from test_method_teran import cli_run as teran_run

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def pairwise_cost(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    import pairwise_cost

    return pairwise_cost


def test_pairwise_cost_on_trained_runs(
    tmp_path: Path, pairwise_cost: ModuleType, capsys: pytest.CaptureFixture
) -> None:
    data = [
        "--data",
        SYNTH.format("Scenes"),
        "--data.root",
        str(tmp_path / "data"),
        "--data.sizes",
        json.dumps(SCENES),
    ]
    runs = [Path(racg_run(tmp_path / "r", data)["run_dir"]), Path(teran_run(tmp_path / "t", data)["run_dir"])]
    out = tmp_path / "cost.csv"
    argv = [*map(str, runs), "--n", "40", "--repeats", "1", "--out", str(out)]
    assert pairwise_cost.main(argv) == 0

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["racg", "teran"]
    for r in rows:
        assert r["pairs"] == "40x40" and float(r["score_s"]) > 0 and float(r["us_per_pair"]) > 0
        assert r["split"] == "test 15x3"  # 3 test images, 5 captions each
        # the exact evaluation here is the test run's: same headline metric as its result.json
        assert r["metric"] == f"rsum {r['result_json']}"
    assert "| racg " in capsys.readouterr().out
