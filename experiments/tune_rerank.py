"""`python -m experiments.tune_rerank RUN [RUN ...] --grid rerank_k=10,50 --grid lam=0,0.25,0.5`: tune a
method's test-time settings on a validation split, from trained runs, without training again.

docs/methods.md §1 asks MMRef's refinement (k, λ) to be tuned once on a validation split and then frozen; the
same holds for any re-rank shortlist. Each run (`runs/<dataset>/<method>/<profile>/seed<k>-<hash>`, with
`config.yaml` and `checkpoints/last.ckpt`) is loaded once, its `--split` is encoded once, and every point of
the grid (the product of the `--grid` values, set as attributes of the method, e.g. `rerank_k`, `lam`) is
scored through the one evaluator. The encoding uses the run's own settings, so only attributes read at scoring
time can be tuned (an MMRef run encodes its reference vectors only when it was trained with `refine` on).

Output: `<out>.csv` (one row per run x grid point, every metric), a printed table of the mean over runs of
`--metric` per grid point, the best point, and for two grid names a heat map `<out>.png`. With `--test`, the
best point and the run's own setting are then scored on the test split, so the gain can be read without
having chosen on test.
"""

from __future__ import annotations

import argparse
import importlib
import io
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from fgbench.data.module import RetrievalDataModule
from fgbench.ensemble import Ensemble
from fgbench.errors import UserError, cli_entry
from fgbench.io import atomic_write_bytes, atomic_write_text
from fgbench.method import RetrievalMethod

CHECKPOINT = Path("checkpoints") / "last.ckpt"


def parse_value(text: str) -> Any:
    """'none' -> None, integers and floats as numbers, anything else as the string."""
    if text.lower() == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """['rerank_k=10,50', 'lam=0,0.5'] -> {'rerank_k': [10, 50], 'lam': [0.0, 0.5]} (order kept)."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise ValueError(f"--grid {spec!r}: expected NAME=V1,V2,... (e.g. lam=0,0.25,0.5)")
        if name in grid:
            raise ValueError(f"--grid {name} given twice")
        grid[name] = [parse_value(v) for v in values.split(",")]
    return grid


def load_datamodule(run: Path) -> RetrievalDataModule:
    """The run's DataModule, rebuilt from the `data` section of its `config.yaml`."""
    path = run / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.yaml; expected a run directory written by `fgbench fit`")
    data = (yaml.safe_load(path.read_text()) or {}).get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: field 'data.class_path' missing; expected LightningCLI's saved config")
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    dm = cls(**(data.get("init_args") or {}))
    if not isinstance(dm, RetrievalDataModule):
        raise TypeError(f"{path}: data.class_path {data['class_path']} is not a RetrievalDataModule")
    return dm


def load_run(run: Path) -> tuple[RetrievalMethod, RetrievalDataModule]:
    """(method restored from the run's last checkpoint, in eval mode, its DataModule set up)."""
    dm = load_datamodule(run)
    dm.setup("test")
    model = Ensemble.load_member(run / CHECKPOINT, dm.info())
    return model.eval(), dm


def apply(model: RetrievalMethod, point: dict[str, Any]) -> None:
    """Set the grid point's test-time attributes on the method; unknown names are an error."""
    for name, value in point.items():
        if not hasattr(model, name):
            raise AttributeError(f"{type(model).__name__} has no test-time attribute {name!r} to tune")
        setattr(model, name, value)


def score_grid(
    model: RetrievalMethod, dm: RetrievalDataModule, split: str, grid: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """Metrics of every grid point on one encoding of `split` (the method's attributes are restored after)."""
    q, g, spec = model.encode_split(dm, split)
    saved = {name: getattr(model, name) for name in grid if hasattr(model, name)}
    rows = []
    try:
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values, strict=True))
            apply(model, point)
            rows.append({**point, **model.evaluate_features(q, g, spec).metrics})
    finally:
        apply(model, saved)
    return rows


def heatmap_png(table: pd.DataFrame, metric: str) -> bytes:
    """A heat map of the mean metric over a two-name grid (rows: first name, columns: second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * table.shape[1], 1.0 + 0.5 * table.shape[0]))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index])
    ax.set_xlabel(str(table.columns.name))
    ax.set_ylabel(str(table.index.name))
    for (i, j), v in pd.DataFrame(table.to_numpy()).stack().items():
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=f"mean {metric}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def summarise(frame: pd.DataFrame, names: list[str], metric: str) -> pd.DataFrame:
    """Mean and std over runs of `metric` per grid point, best first."""
    if metric not in frame.columns:
        raise KeyError(f"--metric {metric!r} is not among the protocol's metrics {sorted(frame.columns)}")
    keyed = frame.assign(**{n: frame[n].astype(str) for n in names})
    stats = keyed.groupby(names, sort=False)[metric].agg(["mean", "std", "count"]).reset_index()
    return stats.sort_values("mean", ascending=False, kind="stable")


def print_summary(stats: pd.DataFrame, names: list[str], metric: str, split: str, console: Console) -> None:
    table = Table(title=f"mean {metric} on {split} per grid point (best first)")
    for col in [*names, "mean", "std", "n"]:
        table.add_column(col, justify="right")
    for _, row in stats.iterrows():
        std = "" if pd.isna(row["std"]) else f"{row['std']:.2f}"
        table.add_row(*[str(row[n]) for n in names], f"{row['mean']:.2f}", std, str(int(row["count"])))
    console.print(table)


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.tune_rerank", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (config.yaml, checkpoints/last.ckpt)")
    ap.add_argument("--grid", action="append", required=True, help="NAME=V1,V2,... (repeatable)")
    ap.add_argument("--split", default="val", help="split to tune on (default: val)")
    ap.add_argument("--metric", default="R1", help="metric to maximise (default: R1)")
    ap.add_argument("--out", type=Path, required=True, help="output stem: <out>.csv, <out>.png")
    ap.add_argument("--test", action="store_true", help="then score the best point and the run's own on test")
    args = ap.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            raise UserError(
                f"{run} is not a folder; expected a run directory written by `python -m fgbench fit`"
            )
    grid = parse_grid(args.grid)
    names = list(grid)
    console = Console()

    rows, models = [], []
    for run in args.runs:
        model, dm = load_run(run)
        models.append((run, model, dm))
        console.print(f"[bold]{run}[/]: scoring {len(list(itertools.product(*grid.values())))} points")
        rows += [{"run": str(run), "split": args.split, **r} for r in score_grid(model, dm, args.split, grid)]
    frame = pd.DataFrame(rows)
    atomic_write_text(args.out.with_suffix(".csv"), frame.to_csv(index=False))
    stats = summarise(frame, names, args.metric)
    print_summary(stats, names, args.metric, args.split, console)
    best = {n: parse_value(str(stats.iloc[0][n])) for n in names}
    console.print(f"best on {args.split}: {best} ({args.metric} {stats.iloc[0]['mean']:.2f})")
    if len(names) == 2:
        pivot = stats.pivot(index=names[0], columns=names[1], values="mean")
        order = [[str(v) for v in grid[n]] for n in names]
        pivot = pivot.reindex(index=order[0], columns=order[1])
        atomic_write_bytes(args.out.with_suffix(".png"), heatmap_png(pivot, args.metric))
    written = [str(args.out.with_suffix(s)) for s in (".csv", ".png")[: 1 + (len(names) == 2)]]

    if args.test:
        test_rows = []
        for run, model, dm in models:
            own = {n: getattr(model, n) for n in names}
            for label, point in (("own", own), ("best", best)):
                r = score_grid(model, dm, dm.test_split, {n: [v] for n, v in point.items()})[0]
                test_rows.append({"run": str(run), "split": dm.test_split, "setting": label, **r})
        tf = pd.DataFrame(test_rows)
        path = args.out.with_name(args.out.name + "_test").with_suffix(".csv")
        atomic_write_text(path, tf.to_csv(index=False))
        written.append(str(path))
        agg = tf.groupby("setting", sort=False)[args.metric].agg(["mean", "std"])
        for label, row in agg.iterrows():
            std = "" if pd.isna(row["std"]) else f" ± {row['std']:.2f}"
            n = len(models)
            console.print(f"test {args.metric}, {label} setting: {row['mean']:.2f}{std} over {n} run(s)")
    console.print("wrote " + ", ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
