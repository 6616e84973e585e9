"""experiments.leaderboard with per-query outcomes beside the results: CI columns, rank intervals and tie
marks, the pairwise CSV and heat map, the power and chance notes, and the graceful fallback without outcomes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments import leaderboard as lb
from experiments.leaderboard_stats import PAIR_COLUMNS
from fgbench.evaluation.outcomes import DirectionOutcomes, QueryOutcomes, outcomes_file, save_outcomes
from tests.test_leaderboard import write_run

N_QUERY = 400


def person_outcomes(rng: np.random.Generator, skill: float) -> QueryOutcomes:
    """person_t2i outcomes whose R@K success rate grows with `skill`; 4 relevant items among 100."""
    ids = np.array([f"cap{i:04d}" for i in range(N_QUERY)])
    first = np.where(rng.random(N_QUERY) < skill, 0, rng.integers(1, 40, N_QUERY))
    ap = np.clip(1.0 / (first + 1) + rng.normal(0, 0.02, N_QUERY), 0, 1)
    stats = {"ap": ap, "inp": ap / 2, "n_pos": np.full(N_QUERY, 4), "n_cand": np.full(N_QUERY, 100)}
    return QueryOutcomes("person_t2i", "test", {"t2i": DirectionOutcomes(ids, first, stats)})


def metrics_of(o: QueryOutcomes) -> dict[str, float]:
    d = o.directions["t2i"]
    out = {f"R{k}": 100.0 * float(np.mean(d.first < k)) for k in (1, 5, 10)}
    return {**out, "mAP": 100.0 * float(d.stats["ap"].mean()), "mINP": 100.0 * float(d.stats["inp"].mean())}


def write_with_outcomes(root: Path, method: str, seed: int, skill: float, rng: np.random.Generator) -> None:
    o = person_outcomes(rng, skill)
    path = write_run(root, "synth-person", method, "tiny", seed, metrics_of(o))
    save_outcomes(path.parent / outcomes_file("test"), o)


@pytest.fixture
def built(tmp_path: Path) -> tuple[lb.BuildReport, Path]:
    rng = np.random.default_rng(0)
    runs, out = tmp_path / "runs", tmp_path / "results"
    for seed in range(2):
        write_with_outcomes(runs, "strong", seed, 0.60, rng)
        write_with_outcomes(runs, "close", seed, 0.59, rng)  # within noise of the leader
        write_with_outcomes(runs, "weak", seed, 0.20, rng)
    write_run(runs, "synth-person", "legacy", "tiny", 0, metrics_of(person_outcomes(rng, 0.3)))  # no outcomes
    return lb.build(runs, out, resamples=499, stats_seed=3), out


def test_csv_has_ci_rank_and_tie_columns(built: tuple[lb.BuildReport, Path]) -> None:
    _, out = built
    csv = pd.read_csv(out / "leaderboards" / "synth-person.csv", keep_default_na=False)
    for m in ("R1", "R5", "R10", "mAP", "mINP"):
        assert {f"{m}_mean", f"{m}_std", f"{m}_ci_low", f"{m}_ci_high"} <= set(csv.columns)
    assert {"rank", "tie", "ci_resamples", "stats_seed"} <= set(csv.columns)
    rows = csv.set_index("method")
    assert rows.loc["strong", "tie"] == "leader" and rows.loc["close", "tie"] == "tied"
    assert rows.loc["weak", "tie"] == "" and rows.loc["weak", "rank"] == "3"
    assert rows.loc["strong", "rank"] == "1–2" and rows.loc["close", "rank"] == "1–2"
    for name in ("strong", "close", "weak"):
        low, mean, high = (float(rows.loc[name, f"R1_{c}"]) for c in ("ci_low", "mean", "ci_high"))
        assert low < mean < high
    assert int(rows.loc["strong", "ci_resamples"]) == 499 and int(rows.loc["strong", "stats_seed"]) == 3
    # no outcomes: the point estimate stays, CI and rank are empty
    assert rows.loc["legacy", "R1_ci_low"] == "" and rows.loc["legacy", "rank"] == ""
    assert float(rows.loc["legacy", "R1_mean"]) > 0


def test_pairwise_csv_and_heat_map(built: tuple[lb.BuildReport, Path]) -> None:
    _, out = built
    base = out / "leaderboards" / "synth-person.person_t2i.test.pairwise"
    pairs = pd.read_csv(base.parent / f"{base.name}.csv")
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert len(pairs) == 3  # the three rows with outcomes, each pair once
    assert (pairs["p_holm"] >= pairs["p"]).all()
    weak = pairs[(pairs["b"] == "weak (tiny)") | (pairs["a"] == "weak (tiny)")]
    assert weak["significant"].all() and (weak["p_holm"] < 0.05).all()
    assert (base.parent / f"{base.name}.png").read_bytes()[:4] == b"\x89PNG"


def test_markdown_notes_power_chance_and_the_missing_outcomes(built: tuple[lb.BuildReport, Path]) -> None:
    report, out = built
    md = (out / "leaderboards" / "synth-person.md").read_text()
    assert "80% power" in md and f"{N_QUERY} query units" in md
    assert "No CI, rank or test for legacy (tiny)" in md
    assert "| strong | tiny | n=2 | 1–2 (leader) |" in md
    board = report.boards["synth-person"][0]
    assert board.stats is not None and board.stats.chance == pytest.approx(4.0)  # 4 relevant in 100: R1 4%
    assert board.stats.mdd is not None and 0 < board.stats.mdd < 20


def test_resamples_option_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "runs").mkdir()
    assert lb.main(["--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path), "--resamples", "5"]) == 2
    assert "--resamples 5" in capsys.readouterr().err


def test_a_protocol_without_decomposition_keeps_its_point_estimates(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    runs = tmp_path / "runs"
    for method in ("a", "b"):
        o = person_outcomes(rng, 0.5)
        o.protocol = "toy_protocol"  # no per-query decomposition registered
        path = write_run(runs, "synth-toy", method, "tiny", 0, {"R1": 50.0}, protocol="toy_protocol")
        save_outcomes(path.parent / outcomes_file("test"), o)
    report = lb.build(runs, tmp_path / "out", resamples=199)
    table = report.boards["synth-toy"][0].table
    assert table["R1_mean"].tolist() == [50.0, 50.0] and table["R1_ci_low"].isna().all()
    md = (tmp_path / "out" / "leaderboards" / "synth-toy.md").read_text()
    assert "No CI for a (tiny), b (tiny): no per-query decomposition for protocol 'toy_protocol' yet." in md
    assert not (tmp_path / "out" / "leaderboards" / "synth-toy.toy_protocol.test.pairwise.csv").exists()
