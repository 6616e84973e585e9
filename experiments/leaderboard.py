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

import pandas as pd

from fgbench.errors import UserError, cli_entry
from fgbench.io import atomic_write_bytes, atomic_write_text
from fgbench.results import RESULT_GLOB, is_result_file, read_result

# protocol id -> the metrics its published tables report (docs/protocols.md §5); the first is the chart's
# metric
HEADLINE: dict[str, tuple[str, ...]] = {
    "person_t2i": ("R1", "R5", "R10", "mAP", "mINP"),
    "class_reed": ("AP50", "top1"),
    "f30k_1k": ("rsum", "i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10"),
    "coco_5k": ("rsum", "i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10"),
    "coco_1k_5fold": ("rsum", "i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10"),
    "fiq_a": ("avg", "avg_R10", "avg_R50", "dress_R10", "dress_R50", "shirt_R10", "shirt_R50", "toptee_R10",
              "toptee_R50"),
    "fiq_b": ("avg", "avg_R10", "avg_R50", "dress_R10", "dress_R50", "shirt_R10", "shirt_R50", "toptee_R10",
              "toptee_R50"),
    "cirr": ("avg", "R1", "R5", "R10", "R50", "Rsub1", "Rsub2", "Rsub3"),
    "f200k": ("R1", "R10", "R50"),
}  # fmt: skip

# registry dataset name -> the `dataset` spelling of published.csv (datasets absent here are never compared)
PUBLISHED_DATASETS: dict[str, str] = {
    "rstpreid": "RSTPReid",
    "cuhk-pedes": "CUHK-PEDES",
    "icfg-pedes": "ICFG-PEDES",
    "f30k": "Flickr30K",
    "coco": "MS-COCO",
    "fashioniq": "FashionIQ",
    "cirr": "CIRR",
    "fashion200k": "Fashion200K",
}

# published.csv `method` -> registry name. At most one published name per registry name, so a measured cell
# has at most one published number; the choice is the row docs/methods.md names as the method's reference.
PUBLISHED_METHODS: dict[str, str] = {
    "CLIP (fine-tuned baseline)": "clip_ft",
    "CLIP zero-shot (LAVIS re-evaluation)": "clip_zs",
    "IRRA": "irra",
    "VSE++": "vsepp",
    "TIRG": "tirg",
    "CLIP4Cir v3 (TOMM'23)": "clip4cir",
    "MMRef": "mmref",
    "TERAN (MrSw, single model)": "teran",
    "NSFSE": "nsfse",
}

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
    """The columns of a protocol's table; an unlisted protocol shows every metric it produced, sorted."""
    return list(HEADLINE.get(protocol, sorted(metrics)))


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
        }
        rows += [{**base, "metric": m, "value": float(v)} for m, v in rec["metrics"].items()]
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, "_mtime", "_trained", "_file"])


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
    by_name = {v: k for k, v in PUBLISHED_DATASETS.items()}
    pub = pub[pub["dataset"].isin(by_name) & pub["method"].isin(PUBLISHED_METHODS)]
    return pd.DataFrame(
        {
            "dataset": pub["dataset"].map(by_name),
            "split": pub["split"],
            "protocol": pub["protocol"],
            "method": pub["method"].map(PUBLISHED_METHODS),
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

    @property
    def max_n(self) -> int:
        return int(self.table["n"].max()) if len(self.table) else 0


def boards_for(dataset: str, compared: pd.DataFrame, set_aside: pd.Series) -> list[Board]:
    """The tables of one dataset, one per (protocol, split), rows sorted by method then profile."""
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
        boards.append(Board(dataset, str(protocol), str(split), metrics, table, aside))
    return boards


def _num(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def cell_text(row: pd.Series, metric: str) -> str:
    """'54.05 ± 1.20 (paper 60.13†, Δ −6.08)': the measured mean ± std, then the published number."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if math.isnan(mean):
        return ""
    text = _num(mean) + (f" ± {_num(std)}" if not math.isnan(std) else "")
    pub = row[f"{metric}_published"]
    if not math.isnan(pub):
        verified = row[f"{metric}_verified"]
        mark = "" if pd.notna(verified) and bool(verified) else "†"
        text += f" (paper {_num(pub)}{mark}, Δ {row[f'{metric}_delta']:+.2f})"
    return text


def n_text(row: pd.Series) -> str:
    return f"n={row['n']}" + ("*" if row["flagged"] else "")


def board_markdown(board: Board) -> str:
    """One table in GitHub markdown, with its footnotes."""
    head = ["method", "profile", "n", *board.metrics]
    lines = [
        f"## {board.protocol}, split {board.split}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for _, row in board.table.iterrows():
        cells = [row["method"], row["profile"], n_text(row), *(cell_text(row, m) for m in board.metrics)]
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
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def dataset_markdown(dataset: str, boards: Sequence[Board]) -> str:
    """The whole `<dataset>.md`: title, conventions, then one table per (protocol, split)."""
    title = f"# {dataset}" + (" (synthetic)" if is_synthetic(dataset) else "")
    intro = [
        "Mean ± sample std (ddof=1; blank for n=1) over seeds, in percent; n = seeds.",
        "Synthetic benchmark: never compared with paper numbers."
        if is_synthetic(dataset)
        else "Paper numbers only for the `paper` profile where dataset, split and protocol match; "
        "Δ = measured − paper, in points.",
    ]
    return "\n".join([title, "", *intro, ""]) + "\n" + "\n".join(board_markdown(b) for b in boards)


def dataset_csv(boards: Sequence[Board]) -> str:
    """All tables of a dataset in one CSV (protocol and split as columns), std blank for n=1."""
    frames = [b.table.assign(dataset=b.dataset, protocol=b.protocol, split=b.split) for b in boards]
    table = pd.concat(frames, ignore_index=True)
    front = ["dataset", "protocol", "split", "method", "profile", "n", "flagged", "published_as"]
    table = table[front + [c for c in table.columns if c not in front]]
    return table.to_csv(index=False, float_format="%.6g")


def dataset_png(dataset: str, boards: Sequence[Board]) -> bytes:
    """Bar chart of each table's first headline metric (mean, sample-std error bars, paper number as ◆)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(boards), 1, figsize=(8, 3.2 * len(boards)), squeeze=False)
    for ax, board in zip(axes[:, 0], boards, strict=True):
        metric, t = board.metrics[0], board.table
        labels = [f"{r.method}\n({r.profile}, {n_text(pd.Series(r._asdict()))})" for r in t.itertuples()]
        x = range(len(t))
        ax.bar(x, t[f"{metric}_mean"], yerr=t[f"{metric}_std"].fillna(0.0), capsize=4, color="#4c72b0")
        pub = t[f"{metric}_published"]
        if pub.notna().any():
            ax.scatter(x, pub, marker="D", color="#dd8452", zorder=3, label="paper")
            ax.legend(loc="upper right")
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.set_ylabel(f"{metric} (%)")
        tag = " [synthetic]" if is_synthetic(dataset) else ""
        ax.set_title(f"{dataset}{tag}: {metric}, {board.protocol} / {board.split}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
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
        boards[dataset] = bs = boards_for(dataset, compared, set_aside)
        base = out / "leaderboards" / dataset
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
            for col in ("method", "profile", "n", *b.metrics):
                left = col in ("method", "profile")
                table.add_column(col, justify="left" if left else "right", no_wrap=left)
            for _, row in b.table.iterrows():
                cells = (cell_text(row, m) for m in b.metrics)
                # escaped: `method[variant]` is a name, not rich markup (which would swallow the variant)
                table.add_row(escape(row["method"]), row["profile"], n_text(row), *cells)
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
    args = parser.parse_args(argv)
    if not Path(args.runs_root).is_dir():
        raise UserError(
            f"--runs-root {args.runs_root} is not a folder; pass the folder the runs were written to"
        )
    if args.published is not None:
        if not Path(args.published).is_file():
            raise UserError(f"--published {args.published} not found")
        load_published(args.published)  # a malformed table is refused before anything is written
    report = build(args.runs_root, args.out, args.published, png=not args.no_png)
    for reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if not args.quiet:
        print_boards(report)
    print(f"{report.runs} runs -> {len(report.written)} files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
