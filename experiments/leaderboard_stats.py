"""The leaderboard's statistics: per-query outcomes of each row's seeds -> CIs, pairwise tests, rank
intervals, power and the chance level (docs/statistics.md).

A row (method x profile) is the seeds the leaderboard kept; each seed's per-query outcomes file sits beside
its result (`outcomes.<split>[.<variant>].npz`). A row without them (an older run, a protocol without a
per-query decomposition yet) keeps its point estimate and seed std, with empty CI columns and a note why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fgbench import stats as st
from fgbench.evaluation import PROTOCOLS
from fgbench.evaluation.outcomes import (
    QueryOutcomes,
    load_outcomes,
    metric_values,
    outcomes_file,
)


@dataclass
class RowSample:
    """One leaderboard row's per-unit values of one metric over its seeds: [S, N] on sorted unit ids."""

    units: np.ndarray
    values: np.ndarray


def load_row_outcomes(seeds: list[tuple[str, str]], split: str) -> list[QueryOutcomes]:
    """Every seed's outcomes of a row ((run_dir, outcomes file name) pairs; a bare file name is
    `outcomes_file(split)`); raises with the file that is missing."""
    return [load_outcomes(Path(run_dir) / (name or outcomes_file(split))) for run_dir, name in seeds]


def row_sample(outcomes: list[QueryOutcomes], metric: str, where: str = "") -> RowSample:
    """Stack each seed's per-unit values of `metric`; the seeds must share their units."""
    samples = [metric_values(o, metric) for o in outcomes]
    units = samples[0].units
    for s in samples[1:]:
        if len(s.units) != len(units) or not np.array_equal(s.units, units):
            raise ValueError(f"{where}: seeds were scored on different query units")
    return RowSample(units, np.stack([s.values for s in samples]))


_RECALL = re.compile(r"^(?:(?P<dir>[A-Za-z0-9]+)_)?R(?P<k>\d+)$")


def chance_level(outcomes: QueryOutcomes, metric: str) -> float | None:
    """R@K of a random ranking from the outcomes' n_pos/n_cand, for a recall metric ("R1", "t2i_R5");
    None when the metric is not a single direction's recall or the counts are absent."""
    m = _RECALL.match(metric)
    if not m:
        return None
    dirs = outcomes.directions
    name = m["dir"] or (next(iter(dirs)) if len(dirs) == 1 else None)
    d = dirs.get(name) if name else None
    if d is None or "n_pos" not in d.stats or "n_cand" not in d.stats:
        return None
    return st.chance_recall(d.stats["n_pos"], d.stats["n_cand"], int(m["k"]))


@dataclass
class BoardStats:
    """What the statistics add to one (protocol, split) table."""

    metric: str  # the headline metric the ranks, pairs and power are about
    resamples: int
    seed: int
    pairwise: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    chance: float | None = None
    mdd: float | None = None  # minimal detectable difference at 80% power, alpha 0.05 (points)


PAIR_COLUMNS = ("metric", "a", "b", "difference", "ci_low", "ci_high", "p", "p_holm", "significant",
                "n_units", "sd_diff", "resamples", "stats_seed")  # fmt: skip


def row_name(row: Any) -> str:
    return f"{row['method']} ({row['profile']})"


def add_stats(
    table: pd.DataFrame,
    metrics: list[str],
    seeds_of: dict[tuple[str, str], list[tuple[str, str]]],
    split: str,
    resamples: int,
    seed: int,
) -> BoardStats:
    """Fill `<m>_ci_low`, `<m>_ci_high`, `rank` and `tie` in `table` (in place); return pairs and notes."""
    head = metrics[0]
    bs = BoardStats(head, resamples, seed)
    for m in metrics:
        table[f"{m}_ci_low"] = math.nan
        table[f"{m}_ci_high"] = math.nan
    table["rank"] = ""
    table["tie"] = ""
    heads: dict[int, RowSample] = {}
    reasons: list[str] = []
    no_file: list[str] = []
    missing: dict[str, list[str]] = {}
    for i, row in table.iterrows():
        name = row_name(row)
        try:
            outs = load_row_outcomes(seeds_of[(row["method"], row["profile"])], split)
        except FileNotFoundError:
            no_file.append(name)
            continue
        except ValueError as err:
            reasons.append(f"{name}: {err}")
            continue
        proto = PROTOCOLS.get(outs[0].protocol)
        if proto is None or proto.metric_values is None:
            missing.setdefault(
                f"no per-query decomposition for protocol {outs[0].protocol!r} yet", []
            ).append(name)
            continue
        if bs.chance is None:
            bs.chance = chance_level(outs[0], head)
        for m in metrics:
            try:
                sample = row_sample(outs, m, name)
            except KeyError as err:  # no decomposition for the protocol or this metric: one note per cause
                missing.setdefault(str(err.args[0]), []).append(name if m == head else f"{name} {m}")
                continue
            except ValueError as err:
                reasons.append(str(err))
                break
            iv = st.metric_ci(sample.values, resamples, seed)
            table.loc[i, f"{m}_ci_low"], table.loc[i, f"{m}_ci_high"] = iv.low, iv.high
            if m == head:
                heads[i] = sample
    if no_file:
        bs.notes.append(
            f"No CI, rank or test for {', '.join(no_file)}: a seed has no per-query outcomes file "
            f"(outcomes.{split}.npz beside its result; re-test the run to write it)."
        )
    for cause, names in missing.items():
        bs.notes.append(f"No CI for {', '.join(dict.fromkeys(names))}: {cause}.")
    if reasons:
        bs.notes.append("No CI for " + "; ".join(reasons) + ".")
    _pairs_and_ranks(table, heads, bs)
    return bs


def _pairs_and_ranks(table: pd.DataFrame, heads: dict[int, RowSample], bs: BoardStats) -> None:
    idx = list(heads)
    # a Monte Carlo p-value is at least 2/(B+1): enough resamples that Holm over m pairs can still reach
    # alpha/5 (B >= 10 m / alpha), else a large gap could never be called significant in a big table
    n_pairs = len(idx) * (len(idx) - 1) // 2
    resamples = max(bs.resamples, math.ceil(10 * n_pairs / st.ALPHA))
    rows, skipped = [], []
    for a_pos, a in enumerate(idx):
        for b in idx[a_pos + 1 :]:
            ua, ub = heads[a].units, heads[b].units
            if len(ua) != len(ub) or not np.array_equal(ua, ub):
                skipped.append(f"{row_name(table.loc[a])} vs {row_name(table.loc[b])}")
                continue
            r = st.paired_test(heads[a].values, heads[b].values, resamples, bs.seed)
            rows.append({"metric": bs.metric, "a": row_name(table.loc[a]), "b": row_name(table.loc[b]),
                         "difference": r.difference, "ci_low": r.low, "ci_high": r.high, "p": r.p,
                         "n_units": r.n_units, "sd_diff": r.sd_diff, "resamples": resamples,
                         "stats_seed": bs.seed, "_a": a, "_b": b})  # fmt: skip
    if skipped:
        bs.notes.append("Not paired (different query units): " + "; ".join(skipped) + ".")
    pairs = pd.DataFrame(rows, columns=[*PAIR_COLUMNS, "_a", "_b"])
    pairs["p_holm"] = st.holm(pairs["p"].to_numpy()) if len(pairs) else []
    pairs["significant"] = pairs["p_holm"] < st.ALPHA
    bs.pairwise = pairs
    if heads:
        n_units = len(next(iter(heads.values())).units)
        if len(pairs):
            sd = float(pairs["sd_diff"].median())
            bs.mdd = st.min_detectable_difference(sd, n_units)
            bs.notes.append(
                f"Power: with {n_units} query units and the median sd of per-unit {bs.metric} differences "
                f"between rows ({sd:.1f} points), the paired test detects a true gap of {bs.mdd:.2f} points "
                "with 80% power at the 5% level."
            )
        else:
            leader = max(heads, key=lambda i: float(heads[i].values.mean()))
            v = heads[leader].values
            if v.min() >= 0 and v.max() <= 100:
                sd = st.binomial_sd_diff(float(v.mean()))
                bs.mdd = st.min_detectable_difference(sd, n_units)
                bs.notes.append(
                    f"Power (no pair to measure it on; conservative, independent 0/100 outcomes): with "
                    f"{n_units} query units a true {bs.metric} gap of {bs.mdd:.2f} points is detected with "
                    "80% power at the 5% level."
                )
    if len(heads) < 2:
        return
    pos = {i: k for k, i in enumerate(idx)}
    better = np.zeros((len(idx), len(idx)), dtype=bool)
    sig = pairs[pairs["significant"]]
    for a_i, b_i, diff in zip(sig["_a"], sig["_b"], sig["difference"], strict=True):
        a, b = pos[a_i], pos[b_i]
        if diff > 0:
            better[a, b] = True
        else:
            better[b, a] = True
    means = np.array([heads[i].values.mean() for i in idx])
    leader = idx[int(np.argmax(means))]
    for i, (lo, hi) in zip(idx, st.rank_intervals(means, better), strict=True):
        table.loc[i, "rank"] = f"{lo}" if lo == hi else f"{lo}–{hi}"
        table.loc[i, "tie"] = "leader" if i == leader else ("tied" if lo == 1 else "")
    bs.notes.append(
        f"rank: the {bs.metric} ranks a row can hold given the pairwise tests (Holm-corrected, 5%): "
        "best = 1 + rows significantly ahead of it, worst = rows − rows significantly behind it. "
        "tie: `tied` = no row significantly ahead of it (so not behind the leader). "
        f"CIs: 95%, {bs.resamples} bootstrap resamples, stats seed {bs.seed}."
    )


def public_pairs(bs: BoardStats) -> pd.DataFrame:
    """The pairwise table as written (no private columns)."""
    return bs.pairwise[list(PAIR_COLUMNS)]
