"""`python -m experiments.compare A B [--metric M] [--split test] [--resamples N]`: is A better than B?

A and B are run folders (one seed: the folder's result.json and outcomes.<split>.npz) or leaderboard row
labels (`method` or `method[variant]`, every counted seed under `--runs-root`, as the leaderboard counts
them). Prints A − B in the metric's points with its 95% CI (queries and seeds) and the p-value of the paired
sign-flip permutation test on the shared query units (docs/statistics.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiments import leaderboard as lb
from experiments.leaderboard_stats import load_row_outcomes, row_sample
from fgbench import stats as st
from fgbench.errors import UserError, cli_entry
from fgbench.evaluation import PROTOCOLS
from fgbench.results import RESULT_FILE, read_result


@dataclass
class Side:
    """One side of a comparison: what it is called, where its seeds' outcomes are, and its protocol."""

    name: str
    seeds: list[tuple[str, str]]  # (run_dir, outcomes file name; "" = outcomes.<split>.npz)
    protocol: str
    dataset: str


def from_run_dir(path: Path) -> Side:
    """A run folder: its result.json names the protocol; one seed."""
    result = path / RESULT_FILE
    if not result.is_file():
        raise UserError(f"{path}: no {RESULT_FILE} in this run folder")
    rec = read_result(result)
    protocol = (rec.get("details") or {}).get("protocol", "unknown")
    named = str((rec.get("outcomes") or {}).get(rec.get("split", "test"), ""))  # beside result.json
    return Side(str(path), [(str(path), named)], protocol, str(rec.get("dataset", "")))


def from_label(label: str, runs_root: Path, split: str, dataset: str | None, profile: str | None) -> Side:
    """A leaderboard row: every seed the leaderboard counts for `label` (one dataset, profile, protocol)."""
    if not runs_root.is_dir():
        raise UserError(f"{label!r} is not a run folder, and --runs-root {runs_root} is not a folder")
    runs = lb.runs_frame(lb.collect(runs_root).records)
    if runs.empty:
        raise UserError(f"{label!r} is not a run folder, and {runs_root} holds no result.json")
    kept, _ = lb.latest_per_seed(runs)
    mine = kept[(kept["method"] == label) & (kept["split"] == split)]
    if dataset:
        mine = mine[mine["dataset"] == dataset]
    if profile:
        mine = mine[mine["profile"] == profile]
    if mine.empty:
        known = ", ".join(sorted(kept["method"].unique()))
        raise UserError(
            f"{label!r}: no run folder of that name and no {split!r} row of that label under {runs_root} "
            f"(with the --dataset/--profile given); labels there: {known}"
        )
    groups = mine.groupby(["dataset", "profile", "protocol"]).size().index.tolist()
    if len(groups) > 1:
        listed = "; ".join(f"dataset {d}, profile {p}, protocol {q}" for d, p, q in groups)
        raise UserError(f"{label!r} names several rows ({listed}); choose one with --dataset and --profile")
    ds, prof, protocol = groups[0]
    seeds = lb.seeds_by_row(kept, ds, protocol, split)[(label, prof)]
    return Side(f"{label} ({ds}, {prof}, n={len(seeds)})", seeds, protocol, ds)


def resolve(spec: str, args: argparse.Namespace) -> Side:
    path = Path(spec)
    if path.is_dir() and (path / RESULT_FILE).is_file():
        return from_run_dir(path)
    return from_label(spec, Path(args.runs_root), args.split, args.dataset, args.profile)


def values(side: Side, split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(units, [seeds, units] values) of `metric`; one clear error when outcomes or the metric are missing."""
    try:
        sample = row_sample(load_row_outcomes(side.seeds, split), metric, side.name)
    except KeyError as err:
        raise UserError(f"{side.name}: {err.args[0]}") from None
    return sample.units, sample.values


def compare_sides(a: Side, b: Side, split: str, metric: str | None, resamples: int, seed: int) -> str:
    """The comparison's one-paragraph answer."""
    if a.protocol != b.protocol:
        raise UserError(
            f"{a.name} was scored with {a.protocol!r}, {b.name} with {b.protocol!r}: not comparable"
        )
    if metric is None:
        if a.protocol not in PROTOCOLS:
            raise UserError(f"protocol {a.protocol!r} has no headline metric; name one with --metric")
        metric = PROTOCOLS[a.protocol].headline[0]
    ua, va = values(a, split, metric)
    ub, vb = values(b, split, metric)
    if len(ua) != len(ub) or not np.array_equal(ua, ub):
        shared = len(np.intersect1d(ua, ub))
        raise UserError(
            f"{a.name} and {b.name} were scored on different {split!r} query units "
            f"({len(ua)} and {len(ub)}, {shared} shared): a paired test needs the same queries"
        )
    r = st.paired_test(va, vb, resamples, seed)
    return (
        f"{metric} ({a.protocol}, {split}): A = {a.name}: {va.mean():.2f}; B = {b.name}: {vb.mean():.2f}\n"
        f"A − B = {r.difference:+.2f} points, 95% CI [{r.low:+.2f}, {r.high:+.2f}], p = {r.p:.4g} "
        f"(paired sign-flip permutation test on {r.n_units} query units, {resamples} resamples, seed {seed})"
    )


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n")[0])
    parser.add_argument("a", help="run folder, or leaderboard row label (method or method[variant])")
    parser.add_argument("b", help="the same, for the method A is compared with")
    parser.add_argument(
        "--metric", default=None, help="metric (default: the protocol's first headline metric)"
    )
    parser.add_argument("--split", default="test", help="evaluation split (default test)")
    parser.add_argument("--runs-root", default="runs", help="where row labels are looked up (default runs)")
    parser.add_argument("--dataset", default=None, help="the dataset, when a label has rows in several")
    parser.add_argument("--profile", default=None, help="the profile, when a label has rows in several")
    parser.add_argument("--resamples", type=int, default=st.DEFAULT_RESAMPLES, help="bootstrap/permutation")
    parser.add_argument("--stats-seed", type=int, default=st.DEFAULT_SEED, help="seed of the resampling")
    args = parser.parse_args(argv)
    if args.resamples < 99:
        raise UserError(f"--resamples {args.resamples}: use at least 99 (a p-value needs resolution < 0.05)")
    a, b = resolve(args.a, args), resolve(args.b, args)
    print(compare_sides(a, b, args.split, args.metric, args.resamples, args.stats_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
