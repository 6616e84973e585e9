"""Cost of pairwise scorers on this machine, on trained runs' own features (issue 9).

For each run directory (`config.yaml`, `checkpoints/last.ckpt`), the method is restored, its test split is
encoded once (timed), and then:

- **score**: `method.score` on n captions x n images, the split's captions and images repeated up to n (a
  pair's cost does not depend on which items it holds), best of `--repeats`; reported per n x n and per pair;
- **exact eval**: `evaluate_features` on the whole split, as the test run does it (on f30k-style protocols
  the evaluator scores every pair once for both directions), with the protocol's headline metric, so the
  time belongs to a result that can be checked against the run's result.json.

The table names the scorer's shapes as stored (word slots, region slots, width, heads). Threads default to
one (`--threads`), as the sweeps run their cells. Progress goes to stderr, the table to stdout and to
`benchmarks/results/pairwise_cost.csv` (temp file, then `os.replace`; `--out` elsewhere).

    .venv/bin/python benchmarks/pairwise_cost.py runs/synth-tiny-scenes-boxes/synth-scenes/*/tiny/seed0-*
    .venv/bin/python benchmarks/pairwise_cost.py RUN --n 100 --repeats 1   # seconds (the test runs this)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _bench import RESULTS, device_label, fmt, log, render, versions, write_csv

from experiments.tune_rerank import load_run
from fgbench.evaluation import get_protocol
from fgbench.features import Features
from fgbench.results import RESULT_FILE, read_result


def repeat_to(f: Features, n: int) -> Features:
    """The first n items of f repeated (index runs 0..n-1)."""
    take = torch.arange(n) % len(f)
    out = f.take(take)
    out.index = torch.arange(n)
    return out


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def shape_of(f: Features, name: str) -> str:
    t = getattr(f, name, None)
    return "-" if t is None or t.dim() < 2 else str(t.shape[1])


def measure(run: Path, n: int, repeats: int) -> dict[str, str]:
    """One run's row: encoding, pairwise score and exact-evaluation times."""
    model, dm = load_run(run)
    record = read_result(run / RESULT_FILE) if (run / RESULT_FILE).is_file() else {}
    with torch.no_grad():
        start = time.perf_counter()
        q, g, spec = model.encode_split(dm, dm.test_split)
        encode_s = time.perf_counter() - start
        qn, gn = repeat_to(q, n), repeat_to(g, n)
        score_s = best_time(lambda: model.score(qn, gn), repeats)
        start = time.perf_counter()
        result = model.evaluate_features(q, g, spec)
        eval_s = time.perf_counter() - start
    metric = get_protocol(spec.protocol).headline[
        0
    ]  # the protocol's headline metric, as the leaderboards chart it
    heads = getattr(getattr(model, "hp", None), "heads", None)
    value = result.metrics[metric]
    log(f"{run}: score {score_s:.2f} s per {n}x{n}, exact eval {eval_s:.2f} s, {metric} {value:.2f}")
    return {
        "run": str(run),
        "method": type(model).name + (f"[{record['variant']}]" if record.get("variant") else ""),
        "word_slots": shape_of(q, "tok"),
        "region_slots": shape_of(g, "tok"),
        "dim": str(g.glob.shape[-1]) if g.glob is not None else "-",
        "heads": "-" if heads is None else str(heads),
        "pairs": f"{n}x{n}",
        "score_s": fmt(score_s, ".3f"),
        "us_per_pair": fmt(score_s / (n * n) * 1e6, ".2f"),
        "split": f"{dm.test_split} {len(q)}x{len(g)}",
        "encode_s": fmt(encode_s, ".2f"),
        "exact_eval_s": fmt(eval_s, ".2f"),
        "metric": f"{metric} {value:.2f}",
        "result_json": "-" if not record else f"{record['metrics'].get(metric, float('nan')):.2f}",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    ap.add_argument("--n", type=int, default=1000, help="captions and images of the timed score (n x n)")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of the score (best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the sweeps)")
    ap.add_argument("--out", type=Path, default=RESULTS / "pairwise_cost.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = [measure(run, args.n, args.repeats) for run in args.runs]
    print(f"pairwise scoring cost on {device_label(device)}; {versions()}")
    print(render(rows, right={"score_s", "us_per_pair", "encode_s", "exact_eval_s"}))
    write_csv(args.out, rows)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
