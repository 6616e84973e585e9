"""`python -m experiments.twins RUN [RUN ...] [--out results/twins.csv]`: the synth-scenes twin test.

About half of synth-scenes' scenes are followed by a *twin* that differs in one relation (a pair of objects
swaps places) or one attribute of one object (colour, shape or size), and the first two captions of both
scenes name what differs (docs/synthetic.md). Recall@K mixes these hard pairs with easy ones; this test
isolates them. For every test pair (scene, twin) and each of those two captions of either scene, a model
passes when it scores the caption's own scene above the twin (ties count half; chance is 50%). Accuracy is
reported per twin kind, per run and as mean ± std over the runs of each method (`method[variant]`), printed
and written to CSV. Scores come from the method's own `score` on its encoded test split (`encode_split`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from experiments.tune_rerank import load_run
from fgbench.errors import UserError, cli_entry
from fgbench.io import atomic_write_text
from fgbench.results import RESULT_FILE, read_result

NAMING_CAPTIONS = 2  # the first two captions of a scene and of its twin name what differs


def record_path(dm: Any) -> Path:
    """The synth-scenes rendering record beside the DataModule's Karpathy JSON."""
    path = Path(dm.base) / "render_record.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no rendering record; the twin test needs synth-scenes data")
    return path


def twin_trials(dm: Any, captions: Sequence[str], caption_image: torch.Tensor) -> pd.DataFrame:
    """One row per trial: (caption index, own test image, twin test image, twin kind)."""
    karpathy = json.loads((Path(dm.base) / dm.karpathy_json).read_text())["images"]
    record = json.loads(record_path(dm).read_text())["images"]
    test = [im for im in karpathy if im["split"] == dm.test_split]
    local = {im["imgid"]: i for i, im in enumerate(test)}
    first: dict[int, int] = {}  # test image -> index of its first caption
    for c, i in enumerate(caption_image.tolist()):
        first.setdefault(i, c)
    rows = []
    for im in test:
        twin = record[im["imgid"]]["twin_of"]
        if twin is None:
            continue
        if twin not in local:
            raise ValueError(f"render_record.json: image {im['imgid']} is a twin of {twin}, not in its split")
        kind = record[im["imgid"]]["twin_kind"]
        for own, other in ((local[im["imgid"]], local[twin]), (local[twin], local[im["imgid"]])):
            for pos in range(NAMING_CAPTIONS):
                c = first[own] + pos
                want = test[own]["sentences"][pos]["raw"]
                if captions[c] != want:
                    raise ValueError(
                        f"caption {c} of the test split is {captions[c]!r}; the JSON says {want!r}"
                    )
                rows.append({"caption": c, "own": own, "twin": other, "kind": kind})
    if not rows:
        raise ValueError(f"{dm.base}: no twins in split {dm.test_split!r}")
    return pd.DataFrame(rows)


def run_trials(run: Path) -> pd.DataFrame:
    """The trials of one run with their outcome (1 pass, 0.5 tie, 0 fail)."""
    model, dm = load_run(run)
    with torch.no_grad():
        q, g, spec = model.encode_split(dm, dm.test_split)
        if spec.protocol != "f30k_1k" or spec.gallery_labels is None:
            raise ValueError(f"{run}: the twin test needs synth-scenes (f30k_1k), got {spec.protocol}")
        es = dm.evaluation_set(dm.test_split)
        trials = twin_trials(dm, es.queries.captions, spec.gallery_labels)
        c = torch.tensor(trials["caption"].to_numpy())
        own = model.score_pairs(q.take(c), g.take(torch.tensor(trials["own"].to_numpy())))
        twin = model.score_pairs(q.take(c), g.take(torch.tensor(trials["twin"].to_numpy())))
    record = read_result(run / RESULT_FILE) if (run / RESULT_FILE).is_file() else {}
    label = type(model).name + (f"[{record['variant']}]" if record.get("variant") else "")
    outcome = (own > twin).float() + 0.5 * (own == twin).float()
    return trials.assign(run=str(run), method=label, seed=record.get("seed"), passed=outcome.cpu().numpy())


def summarise(trials: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (%) per method and twin kind: mean ± std over runs, and the number of trials per run."""
    per_run = trials.groupby(["method", "run", "kind"])["passed"].agg(["mean", "size"]).reset_index()
    per_run["mean"] *= 100
    kinds = per_run.groupby(["method", "kind"]).agg(
        acc=("mean", "mean"), std=("mean", "std"), runs=("run", "nunique"), trials=("size", "first")
    )
    return kinds.reset_index()


def print_table(stats: pd.DataFrame, console: Console) -> None:
    table = Table(title="synth-scenes twin test: own scene scored above its twin (%, chance 50)")
    kinds = sorted(stats["kind"].unique())
    for col in ["method", "runs", *[f"{k} (n)" for k in kinds]]:
        table.add_column(col, justify="left" if col == "method" else "right", no_wrap=col == "method")
    for method, part in stats.groupby("method", sort=False):
        by = part.set_index("kind")
        cells = []
        for k in kinds:
            if k not in by.index:
                cells.append("-")
                continue
            std = "" if pd.isna(by.loc[k, "std"]) else f" ± {by.loc[k, 'std']:.1f}"
            cells.append(f"{by.loc[k, 'acc']:.1f}{std} ({by.loc[k, 'trials']})")
        table.add_row(str(method).replace("[", "\\["), str(part["runs"].max()), *cells)
    console.print(table)


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.twins", description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="trained synth-scenes run directories")
    ap.add_argument("--out", type=Path, default=Path("results") / "twins.csv", help="per-method CSV")
    args = ap.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            raise UserError(
                f"{run} is not a folder; expected a run directory written by `python -m fgbench fit`"
            )
    console = Console()
    trials = []
    for run in args.runs:
        console.print(f"[bold]{run}[/]")
        trials.append(run_trials(run))
    stats = summarise(pd.concat(trials, ignore_index=True))
    print_table(stats, console)
    atomic_write_text(args.out, stats.to_csv(index=False))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
