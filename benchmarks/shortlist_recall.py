"""Recall of the global-embedding shortlist re-scored pairwise, against the exact pairwise evaluation.

A pairwise method (TERAN, with `global_aux_loss` so its position-0 globals are trained) can rank every pair
with its alignment (exact, one evaluation of every image-caption pair) or shortlist each query's top-k by the
global embeddings and re-score only those k pairs (`rerank_k`). For each run directory (`config.yaml`,
`checkpoints/last.ckpt`) the test split is encoded once, then evaluated exactly and with the shortlist at
each `--ks` value, each timed; a row gives R@1/5/10 per direction, rsum, its difference from the exact rsum,
the seconds and the pairs re-scored. The exact evaluation is also timed with the two-walk path (each
direction scores every pair again), the figure behind the evaluator's one-walk default.

The shortlist applies to both directions, so k is capped by each gallery: on synth-scenes' test split (200
images, 1,000 captions) any k >= 200 re-scores every image of a caption query, i.e. t2i is exact there.

    .venv/bin/python benchmarks/shortlist_recall.py runs/synth-scenes/teran/tiny/seed0-*   # a trained run
    .venv/bin/python benchmarks/shortlist_recall.py RUN --ks 10,25,50,100,200 --repeats 2

Threads default to one (`--threads`), as the sweeps run their cells. Table on stdout, CSV to
`benchmarks/results/shortlist_recall.csv` (temp file, then `os.replace`; `--out` elsewhere).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _bench import device_label, fmt, log, out_csv, render, versions, write_csv

import fgbench.method
from experiments.tune_rerank import load_run
from fgbench.evaluation import evaluate
from fgbench.results import RESULT_FILE, read_result

KEYS = ("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "rsum")


class WarningCount(logging.Handler):
    """Counts the evaluator's warnings (a one-walk fallback would show here)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def timed(fn: Any, repeats: int) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def measure(run: Path, ks: list[int], repeats: int) -> list[dict[str, str]]:
    """One run's rows: exact (one walk, two walks), then the shortlist at each k."""
    model, dm = load_run(run)
    if getattr(model, "rerank_k", None) is not None:
        raise SystemExit(f"{run}: trained with rerank_k={model.rerank_k}; pass a run scored exactly")
    if not getattr(model, "global_aux_loss", True):
        raise SystemExit(f"{run}: rerank_k needs the globals trained (global_aux_loss: true)")
    record = read_result(run / RESULT_FILE) if (run / RESULT_FILE).is_file() else {}
    warn = WarningCount()
    logging.getLogger("fgbench.evaluation").addHandler(warn)
    rows: list[dict[str, str]] = []
    try:
        with torch.no_grad():
            q, g, spec = model.encode_split(dm, dm.test_split)
            exact: dict[str, float] = {}
            settings: list[tuple[str, int | None, bool]] = [
                ("exact", None, True),
                ("exact, two walks", None, False),
            ]
            settings += [(f"shortlist k={k}", k, True) for k in ks]
            for label, k, one_walk in settings:
                model.rerank_k = k
                before = warn.n
                if one_walk:
                    res, seconds = timed(lambda: model.evaluate_features(q, g, spec), repeats)
                else:  # the method's own path, with the evaluator's two-walk switch
                    two = functools.partial(evaluate, one_walk=False)
                    saved, fgbench.method.evaluate = fgbench.method.evaluate, two
                    try:
                        res, seconds = timed(lambda: model.evaluate_features(q, g, spec), repeats)
                    finally:
                        fgbench.method.evaluate = saved
                m = res.metrics
                if k is None and one_walk:
                    exact = m
                notes = []
                if k is not None and k >= len(g):
                    notes.append(f"k >= {len(g)} images: t2i re-scores every image (exact)")
                if k is not None and k >= len(q):
                    notes.append(f"k >= {len(q)} captions: i2t exact")
                if warn.n > before:
                    notes.append(f"{warn.n - before} evaluator warnings")
                if label == "exact" and record:
                    notes.append(f"result.json rsum {record['metrics'].get('rsum', float('nan')):.2f}")
                rows.append(
                    {
                        "run": str(run),
                        "setting": label,
                        "k": "-" if k is None else str(k),
                        **{key: fmt(m[key], ".2f") for key in KEYS},
                        "rsum_vs_exact": fmt(m["rsum"] - exact["rsum"], "+.2f"),
                        "seconds": fmt(seconds, ".2f"),
                        "pairs_rescored": "-"
                        if k is None
                        else f"{int(res.details.get('rerank_pairs', 0)):,}",
                        "split": f"{dm.test_split} {len(g)} images x {len(q)} captions",
                        "note": "; ".join(notes),
                    }
                )
                log(f"{run}: {label}: rsum {m['rsum']:.2f} in {seconds:.2f} s")
    finally:
        logging.getLogger("fgbench.evaluation").removeHandler(warn)
        model.rerank_k = None
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="trained run directories of a pairwise method")
    ap.add_argument("--ks", default="50,100,200", help="comma-separated shortlist sizes (default 50,100,200)")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats of each evaluation (best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the sweeps)")
    ap.add_argument("--out", type=Path, default=None, help="CSV path (default results/shortlist_recall.csv)")
    args = ap.parse_args(argv)
    try:
        ks = [int(k) for k in args.ks.split(",")]
    except ValueError:
        ap.error(f"--ks {args.ks!r}: expected comma-separated integers, e.g. 50,100,200")
    if any(k < 1 for k in ks):
        ap.error(f"--ks {args.ks!r}: every k must be >= 1")
    for run in args.runs:
        if not run.is_dir():
            ap.error(f"{run} is not a folder; expected a run directory written by `python -m fgbench fit`")
    torch.set_num_threads(args.threads)
    rows = [row for run in args.runs for row in measure(run, ks, args.repeats)]
    out = out_csv(args.out, False, "shortlist_recall")
    print(f"shortlist recall on {device_label(torch.device('cpu'))}; {versions()}")
    print(render(rows, right={*KEYS, "rsum_vs_exact", "seconds", "pairs_rescored"}))
    write_csv(out, rows)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
