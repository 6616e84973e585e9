"""`python -m experiments.leaderboard [--runs-root runs] [--out results]`: result.json -> CSV and tables.

docs/architecture.md "Results". Every `<runs-root>/**/result.json` becomes rows of `<out>/runs.csv` (one row
per run x metric, with provenance), and each dataset gets `<out>/leaderboards/<dataset>.csv|.md|.png`:

- rows = method x profile, one table per (protocol, split) the dataset was scored with;
- columns = the protocol's headline metrics (docs/protocols.md §5), each as mean ± std over seeds with n. The
  std
  is the sample standard deviation (ddof=1), left blank for n=1. A row with fewer seeds than the most complete
  row of its table is flagged `n=2*`. When one seed was run more than once (e.g. different extra options),
  only its most recent trained result counts (a test-only result never displaces a trained one) and the
  table says how many others were set aside. A test-time variant filed beside a run
  (`result.<variant>.json`) is its own row, `method[variant]`;
- beside each measured number, the published one from `published.csv` and the delta (measured − published,
  points), only where dataset, split and protocol match (docs/protocols.md §7) and only for the `paper`
  profile: a tiny-profile model is not the paper's model. Synthetic datasets are labelled and never compared.
- where the runs wrote per-query outcomes (docs/statistics.md): a 95% CI per headline metric over queries
  and seeds (`<metric>_ci_low`, `<metric>_ci_high`), a `rank` interval and `tie` mark from Holm-corrected
  paired tests on the first headline metric, `<dataset>.<protocol>.<split>.pairwise.csv|.png`, the minimal
  detectable difference in the notes and the chance level on the chart (`--resamples`, `--stats-seed`).

Every file is written atomically, so a reader never sees a half-written leaderboard.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.leaderboard_stats import BoardStats, add_stats, public_pairs
from fgbench import stats as st
from fgbench.errors import UserError, cli_entry
from fgbench.evaluation import PROTOCOLS
from fgbench.evaluation.outcomes import outcomes_file
from fgbench.io import atomic_write_bytes, atomic_write_text
from fgbench.registry import DATAMODULES, METHODS, Registry
from fgbench.results import RESULT_FILE, RESULT_GLOB, is_result_file, read_result


def published_names(registry: Registry[type]) -> dict[str, str]:
    """results/published.csv spelling -> registry name, from each registered class's `published_as` (a
    method's reference row, a dataset's name there); classes without one are never compared with a paper."""
    names: dict[str, str] = {}
    for name in registry.list():
        spelling = registry.get(name).published_as
        if spelling in names:
            raise ValueError(f"{name} and {names[spelling]} both give published_as={spelling!r}")
        if spelling:
            names[spelling] = name
    return names


COMPARED_PROFILES = frozenset({"paper"})  # profiles whose numbers are set beside the papers'
SYNTHETIC_PREFIX = "synth-"  # the embedded benchmark's datasets (datamodules/synthetic)
PUBLISHED_COLUMNS = ("task", "dataset", "split", "protocol", "method", "backbone", "metric", "value",
                     "source", "verified")  # fmt: skip
RUN_COLUMNS = ("dataset", "method", "profile", "seed", "protocol", "split", "metric", "value", "config_hash",
               "git_commit", "git_dirty", "versions", "device", "precision", "wall_time_s", "run_dir",
               "provenance_note")  # fmt: skip
REPO_PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published.csv"
GROUP = ["dataset", "protocol", "split", "method", "profile"]  # one leaderboard row per group


def is_synthetic(dataset: str) -> bool:
    """The embedded benchmark's datasets: labelled synthetic, never compared with paper numbers."""
    return dataset.startswith(SYNTHETIC_PREFIX)


def headline(protocol: str, metrics: Sequence[str]) -> list[str]:
    """The columns of a protocol's table (its registered headline metrics); a protocol the suite does not
    know (a result without one) shows every metric it produced, sorted."""
    return list(PROTOCOLS[protocol].headline) if protocol in PROTOCOLS else sorted(metrics)


# -- collecting result.json ------------------------------------------------------------------------------


@dataclass
class Collected:
    """Every readable run record under a runs root, and why the others were skipped."""

    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


REQUIRED_KEYS = ("dataset", "method", "profile", "seed", "metrics")


def collect(runs_root: str | Path) -> Collected:
    """Read every result.json and result.<variant>.json under `runs_root` (sorted paths); a broken one is
    skipped with its reason. A variant file's record carries its variant (shown as `method[variant]`)."""
    out = Collected()
    paths = (p for p in Path(runs_root).rglob(RESULT_GLOB) if is_result_file(p.name) and p.is_file())
    for path in sorted(paths):
        try:
            rec = read_result(path)
        except (OSError, ValueError) as err:
            out.skipped.append(str(err))
            continue
        missing = [k for k in REQUIRED_KEYS if k not in rec]
        if missing:
            out.skipped.append(f"{path}: missing {', '.join(missing)}")
            continue
        rec.setdefault("run_dir", str(path.parent))
        rec["_mtime"] = path.stat().st_mtime
        rec["_file"] = str(path)
        out.records.append(rec)
    return out


def method_label(rec: dict[str, Any]) -> str:
    """The leaderboard row name: the method, with its variant (an ablation config) in brackets."""
    variant = rec.get("variant") or ""
    return f"{rec['method']}[{variant}]" if variant else str(rec["method"])


def outcomes_name(rec: dict[str, Any], split: str) -> str:
    """The file holding a result's per-query outcomes: the one its result names, else the one a test of
    that result would write (`outcomes.<split>.npz` beside result.json, `.<variant>` beside
    result.<variant>.json)."""
    named = (rec.get("outcomes") or {}).get(split)
    if named:
        return str(named)
    beside_variant = Path(str(rec.get("_file", ""))).name not in ("", RESULT_FILE)
    return outcomes_file(split, str(rec.get("variant") or "") if beside_variant else "")


def runs_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per run x metric (the runs.csv schema) plus `_mtime` for choosing among repeated seeds."""
    rows = []
    for rec in records:
        details = rec.get("details") or {}
        base = {
            "dataset": rec["dataset"],
            "method": method_label(rec),
            "profile": rec["profile"],
            "seed": int(rec["seed"]),
            "protocol": details.get("protocol", "unknown"),
            "split": rec.get("split", details.get("split", "test")),
            "config_hash": rec.get("config_hash", ""),
            "git_commit": rec.get("git_commit", ""),
            "git_dirty": rec.get("git_dirty"),
            "versions": json.dumps(rec.get("versions", {}), sort_keys=True),
            "device": rec.get("device", ""),
            "precision": rec.get("precision", ""),
            "wall_time_s": rec.get("wall_time_s"),
            "run_dir": rec["run_dir"],
            "provenance_note": rec.get("provenance_note", ""),
            "_mtime": rec.get("_mtime", 0.0),
            "_trained": trained(rec),
            "_file": rec.get("_file", rec["run_dir"]),
            "_outcomes": outcomes_name(rec, rec.get("split", details.get("split", "test"))),
        }
        rows += [{**base, "metric": m, "value": float(v)} for m, v in rec["metrics"].items()]
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "_mtime", "_trained", "_file", "_outcomes"])


def trained(rec: dict[str, Any]) -> bool:
    """Whether a record is a trained run's result rather than a test-only one.

    Records say so (`origin`); older ones without it count as trained unless they are the test-only copies
    earlier versions filed in a run folder of their own (a `test` command: no steps, no epochs).
    """
    if "origin" in rec:
        return rec["origin"] == "fit"
    return bool(rec.get("global_step")) or bool(rec.get("epochs"))


def latest_per_seed(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Keep, per group and seed, one result: a trained one before a test-only one, then the most recent.

    Also counts the results set aside per group.
    """
    keys = [*GROUP, "seed"]
    rank = runs["_trained"].astype(int) * 1e12 + runs["_mtime"]  # trained first, then by time
    best = rank.groupby([runs[k] for k in keys]).transform("max")
    chosen = runs[rank == best].groupby(keys)["_file"].max().rename("_keep")
    runs = runs.join(chosen, on=keys)
    kept = runs[runs["_file"] == runs["_keep"]].drop(columns="_keep")
    dropped = runs[runs["_file"] != runs["_keep"]].groupby(GROUP)["_file"].nunique()
    return kept, dropped


# -- aggregation -----------------------------------------------------------------------------------------


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1; NaN for n=1) and n (distinct seeds) per group x metric."""
    stats = (
        runs.groupby([*GROUP, "metric"])["value"]
        .agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else math.nan, n="count")
        .reset_index()
    )
    seeds = runs.groupby(GROUP)["seed"].nunique().rename("seeds").reset_index()
    return stats.merge(seeds, on=GROUP)


def load_published(path: str | Path) -> pd.DataFrame:
    """published.csv restricted to mapped datasets and methods, in registry names.

    Columns: dataset, split, protocol, method (registry), metric, published, verified, published_as.
    """
    pub = pd.read_csv(path, dtype={"value": float})
    missing = [c for c in PUBLISHED_COLUMNS if c not in pub.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(PUBLISHED_COLUMNS)}")
    datasets, methods = published_names(DATAMODULES), published_names(METHODS)
    pub = pub[pub["dataset"].isin(datasets) & pub["method"].isin(methods)]
    return pd.DataFrame(
        {
            "dataset": pub["dataset"].map(datasets),
            "split": pub["split"],
            "protocol": pub["protocol"],
            "method": pub["method"].map(methods),
            "metric": pub["metric"],
            "published": pub["value"],
            "verified": pub["verified"].eq("yes"),
            "published_as": pub["method"],
        }
    )


def compare(stats: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Add `published`, `verified`, `published_as` and `delta` where the paper's number is comparable."""
    keys = ["dataset", "split", "protocol", "method", "metric"]
    out = stats.merge(published, on=keys, how="left")
    comparable = out["profile"].isin(COMPARED_PROFILES) & ~out["dataset"].map(is_synthetic)
    for col in ("published", "verified", "published_as"):
        out[col] = out[col].where(comparable)
    out["delta"] = out["mean"] - out["published"]
    return out


# -- one dataset's leaderboard ---------------------------------------------------------------------------


@dataclass
class Board:
    """One (protocol, split) table of a dataset: a wide frame, its metric columns and its notes."""

    dataset: str
    protocol: str
    split: str
    metrics: list[str]
    table: pd.DataFrame  # one row per method x profile; n, flagged, <m>_mean/_std/_published/_delta
    set_aside: int = 0  # older runs of an already counted seed
    stats: BoardStats | None = None  # CIs, pairwise tests, ranks, power (docs/statistics.md)

    @property
    def max_n(self) -> int:
        return int(self.table["n"].max()) if len(self.table) else 0


def seeds_by_row(kept: pd.DataFrame, dataset: str, protocol: str, split: str) -> dict:
    """(method, profile) -> the kept seeds' (run_dir, outcomes file name), seed order."""
    part = kept[(kept["dataset"] == dataset) & (kept["protocol"] == protocol) & (kept["split"] == split)]
    part = part.drop_duplicates(["method", "profile", "seed"]).sort_values("seed")
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for method, profile, run_dir, name in zip(
        part["method"], part["profile"], part["run_dir"], part["_outcomes"], strict=True
    ):
        out.setdefault((method, profile), []).append((run_dir, name))
    return out


def boards_for(
    dataset: str,
    compared: pd.DataFrame,
    set_aside: pd.Series,
    kept: pd.DataFrame | None = None,
    resamples: int = st.DEFAULT_RESAMPLES,
    stats_seed: int = st.DEFAULT_SEED,
) -> list[Board]:
    """The tables of one dataset, one per (protocol, split), rows sorted by method then profile; with
    `kept` (the counted runs), each table gets its statistics from the runs' per-query outcomes."""
    boards = []
    data = compared[compared["dataset"] == dataset]
    for (protocol, split), part in data.groupby(["protocol", "split"], sort=True):
        metrics = [m for m in headline(protocol, part["metric"].unique()) if m in set(part["metric"])]
        rows = []
        for (method, profile), cell in part.groupby(["method", "profile"], sort=True):
            by_metric = cell.set_index("metric")
            row: dict[str, Any] = {"method": method, "profile": profile, "n": int(cell["seeds"].iloc[0])}
            for m in metrics:
                got = by_metric.loc[m] if m in by_metric.index else None
                for col in ("mean", "std", "published", "delta"):
                    row[f"{m}_{col}"] = got[col] if got is not None else math.nan
                row[f"{m}_verified"] = got["verified"] if got is not None else math.nan
            row["published_as"] = next((p for p in cell["published_as"] if isinstance(p, str)), "")
            rows.append(row)
        table = pd.DataFrame(rows)
        table["flagged"] = table["n"] < table["n"].max()
        aside = sum(
            int(set_aside.get((dataset, protocol, split, r.method, r.profile), 0)) for r in table.itertuples()
        )
        board = Board(dataset, str(protocol), str(split), metrics, table, aside)
        if kept is not None:
            seeds = seeds_by_row(kept, dataset, str(protocol), str(split))
            board.stats = add_stats(table, metrics, seeds, str(split), resamples, stats_seed)
        boards.append(board)
    return boards


def _num(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def cell_text(row: pd.Series, metric: str) -> str:
    """'54.05 ± 1.20 [52.10, 56.02] (paper 60.13†, Δ −6.08)': the measured mean ± std, its 95% CI where
    per-query outcomes exist, then the published number."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if math.isnan(mean):
        return ""
    text = _num(mean) + (f" ± {_num(std)}" if not math.isnan(std) else "")
    low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
    if pd.notna(low) and pd.notna(high):
        text += f" [{_num(low)}, {_num(high)}]"
    pub = row[f"{metric}_published"]
    if not math.isnan(pub):
        verified = row[f"{metric}_verified"]
        mark = "" if pd.notna(verified) and bool(verified) else "†"
        text += f" (paper {_num(pub)}{mark}, Δ {row[f'{metric}_delta']:+.2f})"
    return text


def rank_text(row: pd.Series) -> str:
    """'1–3 (leader)', '1–2 (tied)', '4': the rank interval and the tie mark."""
    rank, tie = row.get("rank", ""), row.get("tie", "")
    return f"{rank} ({tie})" if rank and tie else str(rank or "")


def n_text(row: pd.Series) -> str:
    return f"n={row['n']}" + ("*" if row["flagged"] else "")


def board_markdown(board: Board) -> str:
    """One table in GitHub markdown, with its footnotes."""
    ranked = "rank" in board.table.columns and board.table["rank"].astype(bool).any()
    head = ["method", "profile", "n", *(["rank"] if ranked else []), *board.metrics]
    lines = [
        f"## {board.protocol}, split {board.split}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for _, row in board.table.iterrows():
        rank = [rank_text(row)] if ranked else []
        cells = [
            row["method"],
            row["profile"],
            n_text(row),
            *rank,
            *(cell_text(row, m) for m in board.metrics),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if board.table["flagged"].any():
        notes.append(f"\\* fewer seeds than the most complete row (n={board.max_n}): some seeds are missing.")
    if board.table["published_as"].astype(bool).any():
        names = ", ".join(
            f"{r.method} = {r.published_as}" for r in board.table.itertuples() if r.published_as
        )
        notes.append(f"Paper numbers from results/published.csv ({names}); † = not verified there.")
    if board.set_aside:
        notes.append(
            f"{board.set_aside} older run(s) of an already counted seed set aside "
            "(latest trained result kept)."
        )
    if board.stats is not None:
        notes += board.stats.notes
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def dataset_markdown(dataset: str, boards: Sequence[Board]) -> str:
    """The whole `<dataset>.md`: title, conventions, then one table per (protocol, split)."""
    title = f"# {dataset}" + (" (synthetic)" if is_synthetic(dataset) else "")
    intro = [
        "Mean ± sample std (ddof=1; blank for n=1) over seeds, in percent; n = seeds. [low, high] = 95% CI "
        "over test queries and seeds; rank = the ranks a row can hold given the pairwise tests "
        "(docs/statistics.md).",
        "Synthetic benchmark: never compared with paper numbers."
        if is_synthetic(dataset)
        else "Paper numbers only for the `paper` profile where dataset, split and protocol match; "
        "Δ = measured − paper, in points.",
    ]
    return "\n".join([title, "", *intro, ""]) + "\n" + "\n".join(board_markdown(b) for b in boards)


def dataset_csv(boards: Sequence[Board]) -> str:
    """All tables of a dataset in one CSV (protocol and split as columns), std blank for n=1."""
    frames = [b.table.assign(dataset=b.dataset, protocol=b.protocol, split=b.split) for b in boards]
    front = ["dataset", "protocol", "split", "method", "profile", "n", "flagged", "published_as"]
    for b, frame in zip(boards, frames, strict=True):
        if b.stats is not None:
            frame["ci_resamples"], frame["stats_seed"] = b.stats.resamples, b.stats.seed
    table = pd.concat(frames, ignore_index=True)
    table = table[front + [c for c in table.columns if c not in front]]
    return table.to_csv(index=False, float_format="%.6g")


BAR, TIED, SHADE, PAPER = "#4c72b0", "#8fb3e0", "#e8eef8", "#dd8452"


def dataset_png(dataset: str, boards: Sequence[Board]) -> bytes:
    """Horizontal bars of each table's first headline metric, best on top: 95% CI whiskers (the seed std
    where there is no CI), value labels, the chance level, the rows tied with the leader shaded, the paper
    number as ◆. One bar per row label, so names never overlap; the figure grows with the rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [1.4 + 0.42 * max(len(b.table), 1) for b in boards]
    fig, axes = plt.subplots(
        len(boards), 1, figsize=(9, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for ax, board in zip(axes[:, 0], boards, strict=True):
        _board_bars(ax, dataset, board)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _board_bars(ax: Any, dataset: str, board: Board) -> None:
    metric = board.metrics[0]
    t = board.table.sort_values(f"{metric}_mean", ascending=True, na_position="first").reset_index(drop=True)
    y = list(range(len(t)))
    mean = t[f"{metric}_mean"].to_numpy(dtype=float)
    if f"{metric}_ci_low" in t and t[f"{metric}_ci_low"].notna().any():
        low = (mean - t[f"{metric}_ci_low"].to_numpy(dtype=float)).clip(min=0)
        high = (t[f"{metric}_ci_high"].to_numpy(dtype=float) - mean).clip(min=0)
        err, err_name = (
            [[0 if math.isnan(v) else v for v in low], [0 if math.isnan(v) else v for v in high]],
            "95% CI",
        )
    else:
        err, err_name = t[f"{metric}_std"].fillna(0.0).to_numpy(), "± seed std"
    tie = t["tie"] if "tie" in t else pd.Series([""] * len(t))
    for yi, mark in zip(y, tie, strict=True):
        if mark:
            ax.axhspan(yi - 0.5, yi + 0.5, color=SHADE, zorder=0)
    colors = [BAR if mark == "leader" else (TIED if mark == "tied" else "#9aa5b1") for mark in tie]
    if not tie.astype(bool).any():
        colors = [BAR] * len(t)
    ax.barh(y, mean, xerr=err, color=colors, capsize=3, height=0.7, zorder=2, error_kw={"zorder": 3})
    top = float(np.nanmax(mean + np.asarray(err[1] if isinstance(err, list) else err))) if len(t) else 1.0
    right = np.asarray(err[1] if isinstance(err, list) else err, dtype=float)
    for yi, v, e in zip(y, mean, right, strict=True):
        if not math.isnan(v):
            ax.text(v + e + 0.01 * max(top, 1.0), yi, f"{v:.1f}", va="center", fontsize=8, zorder=4)
    labels = []
    for _, r in t.iterrows():
        rank = f"  #{r['rank']}" if "rank" in t and r.get("rank") else ""
        labels.append(f"{r['method']} ({r['profile']}, {n_text(r)}){rank}")
    ax.set_yticks(y, labels, fontsize=8)
    pub = t[f"{metric}_published"]
    if pub.notna().any():
        ax.scatter(pub, y, marker="D", color=PAPER, zorder=5, label="paper")
    chance = board.stats.chance if board.stats is not None else None
    if chance is not None:
        ax.axvline(
            chance, color="#c44e52", linestyle="--", linewidth=1, zorder=4, label=f"chance {chance:.1f}"
        )
    ax.set_xlim(0, max(top, chance or 0.0) * 1.15 + 1e-9)
    ax.set_xlabel(f"{metric} (%), whiskers: {err_name}")
    if pub.notna().any() or chance is not None:
        ax.legend(loc="lower right", fontsize=8)
    tag = " [synthetic]" if is_synthetic(dataset) else ""
    shaded = " — shaded: not significantly behind the leader" if tie.astype(bool).any() else ""
    ax.set_title(f"{dataset}{tag}: {metric}, {board.protocol} / {board.split}{shaded}", fontsize=9)
    ax.grid(axis="x", alpha=0.3, zorder=1)


def pairwise_png(board: Board) -> bytes:
    """Heat map of the headline metric's pairwise differences (row − column, points); * = significant after
    Holm's correction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert board.stats is not None
    pairs = board.stats.pairwise
    t = board.table.sort_values(f"{board.stats.metric}_mean", ascending=False)
    present = set(pairs["a"]) | set(pairs["b"])
    names = [n for n in (f"{r['method']} ({r['profile']})" for _, r in t.iterrows()) if n in present]
    pos = {n: i for i, n in enumerate(names)}
    diff = np.full((len(names), len(names)), np.nan)
    sig = np.zeros_like(diff, dtype=bool)
    for a, b, d, s in zip(pairs["a"], pairs["b"], pairs["difference"], pairs["significant"], strict=True):
        diff[pos[a], pos[b]], diff[pos[b], pos[a]] = d, -d
        sig[pos[a], pos[b]] = sig[pos[b], pos[a]] = bool(s)
    size = 2.5 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    lim = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
    im = ax.imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim)
    for i in range(len(names)):
        for j in range(len(names)):
            if not math.isnan(diff[i, j]):
                dark = abs(diff[i, j]) > 0.6 * lim
                ax.text(j, i, f"{diff[i, j]:+.1f}" + ("*" if sig[i, j] else ""), ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.colorbar(im, ax=ax, label=f"{board.stats.metric}: row − column (points)")
    ax.set_title(f"{board.dataset}: {board.protocol} / {board.split} (* = significant, Holm 5%)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# -- the build -------------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    """What a build wrote and read, for the caller to print."""

    runs: int
    written: list[Path]
    boards: dict[str, list[Board]]
    skipped: list[str]


def build(
    runs_root: str | Path = "runs",
    out: str | Path = "results",
    published_path: str | Path | None = None,
    png: bool = True,
    resamples: int = st.DEFAULT_RESAMPLES,
    stats_seed: int = st.DEFAULT_SEED,
) -> BuildReport:
    """Collect every result.json and write runs.csv and the per-dataset leaderboards (atomically)."""
    out = Path(out)
    if published_path is None:  # the out folder's copy, else the repository's
        published_path = out / "published.csv" if (out / "published.csv").is_file() else REPO_PUBLISHED
    published_path = Path(published_path)
    got = collect(runs_root)
    runs = runs_frame(got.records)
    written = [atomic_write_text(out / "runs.csv", runs[list(RUN_COLUMNS)].to_csv(index=False))]
    if runs.empty:
        return BuildReport(0, written, {}, got.skipped)
    kept, set_aside = latest_per_seed(runs)
    published = load_published(published_path) if published_path.is_file() else load_published_empty()
    compared = compare(aggregate(kept), published)
    boards: dict[str, list[Board]] = {}
    for dataset in sorted(compared["dataset"].unique()):
        boards[dataset] = bs = boards_for(dataset, compared, set_aside, kept, resamples, stats_seed)
        base = out / "leaderboards" / dataset
        for b in bs:
            if b.stats is not None and len(b.stats.pairwise):
                pair_base = out / "leaderboards" / f"{dataset}.{b.protocol}.{b.split}.pairwise"
                csv = public_pairs(b.stats).to_csv(index=False, float_format="%.6g")
                written.append(atomic_write_text(pair_base.parent / f"{pair_base.name}.csv", csv))
                if png:
                    png_path = pair_base.parent / f"{pair_base.name}.png"
                    written.append(atomic_write_bytes(png_path, pairwise_png(b)))
        written.append(atomic_write_text(base.with_suffix(".csv"), dataset_csv(bs)))
        written.append(atomic_write_text(base.with_suffix(".md"), dataset_markdown(dataset, bs)))
        if png:
            written.append(atomic_write_bytes(base.with_suffix(".png"), dataset_png(dataset, bs)))
    return BuildReport(len(got.records), written, boards, got.skipped)


def load_published_empty() -> pd.DataFrame:
    """No published.csv: nothing is compared."""
    cols = ["dataset", "split", "protocol", "method", "metric", "published", "verified", "published_as"]
    return pd.DataFrame({c: pd.Series(dtype=float if c == "published" else object) for c in cols})


def print_boards(report: BuildReport) -> None:
    """Print every leaderboard as a rich table (the demo's and the sweep's closing output)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # logs and pipes: do not truncate names
    for dataset, boards in report.boards.items():
        for b in boards:
            tag = " (synthetic)" if is_synthetic(dataset) else ""
            table = Table(title=f"{dataset}{tag}: {b.protocol}, split {b.split}")
            ranked = "rank" in b.table.columns and b.table["rank"].astype(bool).any()
            for col in ("method", "profile", "n", *(["rank"] if ranked else []), *b.metrics):
                left = col in ("method", "profile")
                table.add_column(col, justify="left" if left else "right", no_wrap=left)
            for _, row in b.table.iterrows():
                cells = (cell_text(row, m) for m in b.metrics)
                rank = [rank_text(row)] if ranked else []
                # escaped: `method[variant]` is a name, not rich markup (which would swallow the variant)
                table.add_row(escape(row["method"]), row["profile"], n_text(row), *rank, *cells)
            console.print(table)


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.leaderboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--runs-root", default="runs", help="folder searched for result.json (default runs)")
    parser.add_argument(
        "--out", default="results", help="writes runs.csv and leaderboards/ here (default results)"
    )
    parser.add_argument(
        "--published",
        default=None,
        help="published numbers (default <out>/published.csv, else the repository's results/published.csv)",
    )
    parser.add_argument("--no-png", action="store_true", help="skip the bar charts")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    parser.add_argument(
        "--resamples",
        type=int,
        default=st.DEFAULT_RESAMPLES,
        help=f"bootstrap and permutation resamples (default {st.DEFAULT_RESAMPLES}; recorded in the outputs)",
    )
    parser.add_argument(
        "--stats-seed", type=int, default=st.DEFAULT_SEED, help="seed of the resampling (recorded)"
    )
    args = parser.parse_args(argv)
    if not Path(args.runs_root).is_dir():
        raise UserError(
            f"--runs-root {args.runs_root} is not a folder; pass the folder the runs were written to"
        )
    if args.published is not None:
        if not Path(args.published).is_file():
            raise UserError(f"--published {args.published} not found")
        load_published(args.published)  # a malformed table is refused before anything is written
    if args.resamples < 99:
        raise UserError(f"--resamples {args.resamples}: use at least 99 (a p-value needs resolution < 0.05)")
    report = build(args.runs_root, args.out, args.published, not args.no_png, args.resamples, args.stats_seed)
    for reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if not args.quiet:
        print_boards(report)
    print(f"{report.runs} runs -> {len(report.written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
