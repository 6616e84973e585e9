"""Training throughput of the suite's methods: the Lightning step against a bare PyTorch loop (issue 11).

For each method at its paper size (person methods: CLIP ViT-B/16 at 384x128, L = 77, batch 64; TERAN and
RACG: 36 regions x 2048 + BERT-6, batch 40 (COCO); NSFSE: ResNet-50 at 224 + BiGRU, batch 32), on synthetic
tensors, bf16 autocast on a GPU (fp32 on the CPU), with and without `torch.compile`:

- **suite**: the method's `training_step` inside a Lightning `Trainer.fit` with the train CLI's precision and
  clipping (logger, progress bar and checkpointing off; `fgbench.speed.SpeedOptions` compiles the towers),
  fed by a DataLoader of ready batches already on the device, timed by a callback over the steady-state steps;
- **bare**: the same LightningModule in a plain loop: its own `training_step` (no Trainer attached) under the
  same autocast, `backward`, its `grad_clip_norm` clip, `optimizer.step`, `scheduler.step`, with the optimiser
  and schedule of its `configure_optimizers`, on the same batches (`_train_loops.py`).

`suite/bare` is the ratio of their times per step, measured in the same run (median of `--rounds`
alternating rounds). FLOPs per step are counted once with `torch.utils.flop_counter.FlopCounterMode` on a
bare step (matmuls, convolutions and attention kernels, forward and backward; element-wise work is not
counted); MFU = FLOPs per step / suite time per step / the measured matrix rate of the device (a bf16
8192^3 matmul on a GPU; on the CPU an fp32 one, so the CPU MFU is against the fp32 rate).

Host-device synchronisations are found by `SyncProbe`, a dispatch mode that records every op that makes the
host wait for a GPU (`.item()`/`float()`/`bool()` of a tensor, `nonzero`/boolean-mask indexing,
`masked_select`, `pack_padded_sequence`'s host lengths, `unique`, device-to-host copies), with the line
that issued it. It runs on one warm-up step of the suite (the whole Lightning loop iteration) and one bare
step, so it works on the CPU too; on a GPU `torch.cuda.set_sync_debug_mode` counts the real ones as well
(`_sync_probe.py`).

No pretrained weights are needed: paper-size random CLIP and BERT checkpoints (and ResNet-50 weights) are
written to a temp folder and loaded through the methods' own loaders. A method that is not importable or
not registered (e.g. `racg` before it exists) is a "skipped: <why>" row, not a crash. The cases (each
method's sizes and synthetic batches) are in `_train_cases.py`, the shared fakes in `_fakes.py`; this file
measures every case and reports.

    .venv/bin/python benchmarks/train_throughput.py                   # paper sizes (a GPU; else --quick)
    .venv/bin/python benchmarks/train_throughput.py --quick           # tiny profiles on the CPU, seconds
    .venv/bin/python benchmarks/train_throughput.py --only irra,teran --compile off
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _bench import (
    BenchParser,
    Outcome,
    device_label,
    finish,
    fmt,
    header,
    log,
    matmul_rate,
    pick_device,
    render,
)
from _fakes import Checkpoints
from _train_cases import CASES, Case, Ctx
from _train_loops import count_flops, run_bare, run_suite

SCRIPT = "train_throughput"  # its CSV: results/train_throughput.csv
COMPILE_BACKENDS = ("off", "inductor", "eager", "aot_eager")
GOAL_OVERHEAD = 1.05  # suite time per step <= 5% above the bare loop's

# -- one method ----------------------------------------------------------------------------------------


@dataclass
class Row(Outcome):
    """One method x compile setting."""

    method: str
    compile: str
    profile: str = ""
    batch: int = 0
    suite_s: float | None = None
    bare_s: float | None = None
    suite_mb: float | None = None
    bare_mb: float | None = None
    flops: int | None = None
    suite_syncs: int | None = None
    bare_syncs: int | None = None
    sync_sites: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.suite_s / self.bare_s if self.suite_s and self.bare_s else None


def measure(name: str, ctx: Ctx, args: argparse.Namespace, rate: float) -> list[Row]:
    """Every compile setting of one method (eager always; compiled unless --compile off)."""
    compiled = args.compile != "off" and (args.compile_methods == "all" or name in args.compile_methods)
    backends = ["off"] + ([args.compile] if compiled else [])
    try:
        case = CASES[name](ctx)
    except Exception as err:  # not registered / not importable / cannot build: a skipped row, not a crash
        rows = [Row(name, b) for b in backends]
        for row in rows:
            row.mark("skipped", err, 160)
        return rows
    rows = []
    for backend in backends:
        row = Row(name, backend, case.profile, case.batch_size, note=case.note)
        try:
            _measure_one(case, ctx, args, backend, row)
        except Exception as err:
            traceback.print_exc()
            row.mark("failed", err)
        rows.append(row)
        log(
            f"[{name}/{backend}] {row.status}: suite {fmt(row.suite_s and 1e3 * row.suite_s, '.1f')} ms, "
            f"bare {fmt(row.bare_s and 1e3 * row.bare_s, '.1f')} ms, ratio {fmt(row.ratio, '.3f')} {row.note}"
        )
    return rows


def _measure_one(case: Case, ctx: Ctx, args: argparse.Namespace, backend: str, row: Row) -> None:
    t0 = time.perf_counter()
    model = case.new_model()
    batches = [move(case.make_batch(model, seed), ctx.device) for seed in range(args.distinct_batches)]
    log(f"[{row.method}/{backend}] built in {time.perf_counter() - t0:.1f} s; batch {case.batch_size}")
    eager = backend == "off"
    if eager:
        row.flops = count_flops(model, batches[0], ctx.device)
    suite, bare = [], []
    for r in range(args.rounds):
        probe = eager and r == 0
        s = run_suite(model, case.dm, batches, args.warmup, args.steps, ctx.device, probe, backend)
        b = run_bare(model, batches, args.warmup, args.steps, ctx.device, probe)
        suite.append(s)
        bare.append(b)
        if probe:
            row.suite_syncs, row.bare_syncs = s.syncs.total(), b.syncs.total()
            row.sync_sites = [f"suite: {k} x{v}" for k, v in s.syncs.items()]
            row.sync_sites += [f"bare: {k} x{v}" for k, v in b.syncs.items()]
            row.sync_sites += [f"suite (CUDA debug): {m}" for m in s.cuda_syncs]
            row.sync_sites += [f"bare (CUDA debug): {m}" for m in b.cuda_syncs]
    row.suite_s = statistics.median(x.seconds_per_step for x in suite)
    row.bare_s = statistics.median(x.seconds_per_step for x in bare)
    row.suite_mb = _max(x.peak_mb for x in suite)
    row.bare_mb = _max(x.peak_mb for x in bare)
    if not eager:
        row.flops = None
    del model, batches
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _max(values: Iterator[float | None] | Any) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def move(batch: Any, device: torch.device) -> Any:
    from fgbench.data.batches import move_batch

    return move_batch(batch, device)


# -- table ---------------------------------------------------------------------------------------------


def display(rows: list[Row], rate: float, flops_by_method: dict[str, int]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        flops = r.flops if r.flops is not None else flops_by_method.get(r.method)
        mfu = flops / r.suite_s / rate if flops and r.suite_s else None
        note = r.note if r.status == "ok" else f"{r.status}: {r.note}"
        out.append(
            {
                "method": r.method,
                "profile": r.profile or "-",
                "batch": str(r.batch) if r.batch else "-",
                "compile": r.compile,
                "suite ms/step": fmt(r.suite_s and 1e3 * r.suite_s, ".1f"),
                "bare ms/step": fmt(r.bare_s and 1e3 * r.bare_s, ".1f"),
                "suite/bare": fmt(r.ratio, ".3f"),
                "samples/s": fmt(r.batch / r.suite_s if r.suite_s else None, ".1f"),
                "peak MB suite": fmt(r.suite_mb, ".0f"),
                "peak MB bare": fmt(r.bare_mb, ".0f"),
                "GFLOP/step": fmt(flops and flops / 1e9, ".1f"),
                "MFU %": fmt(mfu and 100 * mfu, ".1f"),
                "syncs/step suite": fmt(r.suite_syncs, "d"),
                "syncs/step bare": fmt(r.bare_syncs, "d"),
                "note": note,
            }
        )
    return out


RIGHT = {
    "batch",
    "suite ms/step",
    "bare ms/step",
    "suite/bare",
    "samples/s",
    "peak MB suite",
    "peak MB bare",
    "GFLOP/step",
    "MFU %",
    "syncs/step suite",
    "syncs/step bare",
}


def goals(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        if r.status != "ok" or r.ratio is None:
            continue
        met = r.ratio <= GOAL_OVERHEAD
        out.append(
            f"goal {r.method}/{r.compile}: suite/bare {r.ratio:.3f} (goal <= {GOAL_OVERHEAD}): "
            f"{'MET' if met else 'NOT MET'}"
        )
        if r.suite_syncs is not None:
            out.append(
                f"goal {r.method}: host-device syncs in one suite loop iteration {r.suite_syncs} "
                f"(bare step {r.bare_syncs}; goal 0): {'MET' if r.suite_syncs == 0 else 'NOT MET'}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__, SCRIPT, "tiny profiles, few steps (the fast test)", list(CASES))
    p.add_argument("--compile", default=None, choices=COMPILE_BACKENDS, help="backend of the compiled rows")
    p.add_argument(
        "--compile-methods",
        default=None,
        help="comma-separated methods that get compiled rows, or all (default: all; --quick: clip_ft)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="override every case's batch size")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (>= 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=None, help="alternating suite/bare rounds (median)")
    p.add_argument("--distinct-batches", type=int, default=4, help="different synthetic batches cycled")
    args = p.parse_args(argv)
    # args.out was decided by the flag asked for: without a GPU a plain run falls back to the quick sizes
    # below and still writes the tracked table (its `quick` column says so), as `make bench` does on a CPU
    if not args.quick and args.device == "auto" and not torch.cuda.is_available():
        print("no GPU: running the --quick sizes (the paper sizes need a GPU; --device cpu forces them)")
        args.quick = True
    args.warmup = args.warmup or (3 if args.quick else 5)
    args.steps = args.steps or (3 if args.quick else 20)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.compile = args.compile or ("eager" if args.quick else "inductor")
    args.compile_methods = args.compile_methods or ("clip_ft" if args.quick else "all")
    if args.compile_methods != "all":
        args.compile_methods = tuple(args.compile_methods.split(","))
    if args.warmup < 2:
        p.error("--warmup must be >= 2 (the sync probe runs on a warm-up step)")
    names = CASES.select(args.only, p)

    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    device = pick_device(args.device)
    torch.manual_seed(0)
    rate, rate_desc = matmul_rate(device, args.quick)
    header(device, f"matrix rate (MFU denominator): {rate_desc}")
    compiled = args.compile_methods if args.compile_methods == "all" else ",".join(args.compile_methods)
    print(
        f"warm-up {args.warmup}, timed steps {args.steps}, rounds {args.rounds}, compiled rows: "
        f"{args.compile} ({compiled}); "
        f"{'quick (tiny profiles)' if args.quick else 'paper profiles'}",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fgbench-train-bench-") as tmp:
        ctx = Ctx(args.quick, device, args.batch_size, Checkpoints(Path(tmp)))
        for name in names:
            log(f"[{name}] ...")
            rows += measure(name, ctx, args, rate)
    flops = {r.method: r.flops for r in rows if r.flops}
    disp = display(rows, rate, flops)
    print()
    print(render(disp, RIGHT))
    print()
    for r in rows:
        for site in r.sync_sites:
            print(f"sync {r.method}: {site}")
    for g in goals(rows):
        print(g)
    csv_rows = [
        {
            **{k.replace(" ", "_").replace("/", "_per_").replace("%", "pct"): v for k, v in d.items()},
            "status": r.status,
            "suite_seconds_per_step": r.suite_s,
            "bare_seconds_per_step": r.bare_s,
            "flops_per_step": r.flops if r.flops is not None else flops.get(r.method),
            "matmul_flops_per_s": rate,
            "device": device_label(device),
            "quick": args.quick,
            "sync_sites": " | ".join(r.sync_sites),
        }
        for r, d in zip(rows, disp, strict=True)
    ]
    return finish(args.out, csv_rows, [f"{r.method}/{r.compile}" for r in rows if r.status == "failed"])


if __name__ == "__main__":
    sys.exit(main())
