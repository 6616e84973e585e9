"""experiments.compare: run folders and leaderboard row labels, the printed difference / CI / p, and one
clear error line for each bad input."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from experiments import compare
from fgbench.evaluation.outcomes import outcomes_file, save_outcomes
from tests.test_leaderboard import write_run
from tests.test_leaderboard_stats import metrics_of, person_outcomes, write_with_outcomes


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    root = tmp_path / "runs"
    for seed in range(2):
        write_with_outcomes(root, "strong", seed, 0.7, rng)
        write_with_outcomes(root, "weak", seed, 0.3, rng)
    return root


def run_dir(root: Path, method: str, seed: int = 0) -> Path:
    return next((root / "synth-person" / method / "tiny").glob(f"seed{seed}-*"))


def parse(out: str) -> tuple[float, float, float, float]:
    m = re.search(r"A − B = ([+-][\d.]+) points, 95% CI \[([+-][\d.]+), ([+-][\d.]+)\], p = ([\d.e-]+)", out)
    assert m, out
    return tuple(float(g) for g in m.groups())  # type: ignore[return-value]


def test_labels_use_every_seed(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["strong", "weak", "--runs-root", str(runs), "--resamples", "499"]) == 0
    out = capsys.readouterr().out
    diff, low, high, p = parse(out)
    assert "n=2" in out and "R1 (person_t2i, test)" in out
    assert low < diff < high and 30 < diff < 50 and p < 0.01


def test_run_folders_one_seed_each(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = run_dir(runs, "weak"), run_dir(runs, "strong")
    assert compare.main([str(a), str(b), "--metric", "mAP", "--resamples", "499"]) == 0
    diff, low, high, _ = parse(capsys.readouterr().out)
    assert diff < 0 and low < diff < high


def test_identical_runs_differ_by_nothing(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = run_dir(runs, "strong")
    assert compare.main([str(a), str(a), "--resamples", "499"]) == 0
    diff, _, _, p = parse(capsys.readouterr().out)
    assert diff == 0 and p == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch", "weak"], "'nosuch': no run folder of that name"),
        (["strong", "weak", "--metric", "R7x"], "no per-query metric 'R7x'"),
        (["strong", "weak", "--resamples", "10"], "--resamples 10"),
        (["strong", "legacy"], "no per-query outcomes"),
        (["strong", "other"], "different 'test' query units"),
    ],
)
def test_bad_input_is_one_error_line(
    runs: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    write_run(runs, "synth-person", "legacy", "tiny", 0, metrics_of(person_outcomes(rng, 0.3)))
    o = person_outcomes(rng, 0.5)
    o.directions["t2i"].ids[0] = "another-query"
    path = write_run(runs, "synth-person", "other", "tiny", 0, metrics_of(o))
    save_outcomes(path.parent / outcomes_file("test"), o)
    assert compare.main([*argv, "--runs-root", str(runs)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
