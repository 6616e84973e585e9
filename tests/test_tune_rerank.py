"""experiments.tune_rerank: one encoding of a split scored under a grid of test-time settings."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from test_method_mmref import cli_run, synth

from experiments import tune_rerank


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def test_grid_parsing_and_its_errors() -> None:
    grid = tune_rerank.parse_grid(["rerank_k=1,none", "lam=0,0.5"])
    assert grid == {"rerank_k": [1, None], "lam": [0, 0.5]}
    for bad in (["lam"], ["lam="], ["=1"], ["lam=1", "lam=2"]):
        with pytest.raises(ValueError, match="lam|NAME"):
            tune_rerank.parse_grid(bad)


def test_tuning_mmref_refinement_from_a_trained_run(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, synth(root, "synth-person"))
    out = tmp_path / "tune"
    args = [rec["run_dir"], "--grid", "rerank_k=1,5", "--grid", "lam=0,0.5", "--out", str(out), "--test"]
    assert tune_rerank.main(args) == 0
    frame = pd.read_csv(out.with_suffix(".csv"))
    assert len(frame) == 4 and set(frame["split"]) == {"val"}
    # λ = 0 and k = 1 both reduce to the coarse ranking: one set of metrics for those three points
    coarse = frame[(frame["lam"] == 0) | (frame["rerank_k"] == 1)]
    assert len(coarse) == 3 and coarse[["R1", "mAP", "mINP"]].nunique().max() == 1
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    test = pd.read_csv(tmp_path / "tune_test.csv")
    assert list(test["setting"]) == ["own", "best"] and set(test["split"]) == {"test"}
    own = test[test["setting"] == "own"].iloc[0]
    assert (own["rerank_k"], own["lam"]) == (50, 0.5)
    # the run's own setting, scored from `encode_split` outside a Trainer, equals the Trainer's test run
    for name, value in rec["metrics"].items():
        assert own[name] == pytest.approx(value)


def test_unknown_attribute_is_named(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, synth(root, "synth-person"))
    with pytest.raises(AttributeError, match="no test-time attribute 'lamda'"):
        tune_rerank.main([rec["run_dir"], "--grid", "lamda=0,1", "--out", str(tmp_path / "t")])
