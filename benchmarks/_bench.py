"""Measuring and reporting, shared by the benchmarks: the device and its measured matrix rate, synchronised
timing, peak memory, a row's status, the common command-line flags, the printed table and the CSV.

Not a benchmark itself; each script puts `benchmarks/` on `sys.path` (it is the script's own folder) and
imports this module (and `_fakes`, the synthetic inputs they share).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
QUICK_RESULTS = RESULTS / "quick"  # gitignored: the smoke figures of --quick runs


def out_csv(out: Path | None, quick: bool, script: str) -> Path:
    """A benchmark's CSV: `--out` when given, else results/<script>.csv, or results/quick/<script>.csv for
    a --quick run, so smoke figures never replace the committed full-size tables."""
    if out is not None:
        return out
    return (QUICK_RESULTS if quick else RESULTS) / f"{script}.csv"


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress line on stderr (the table goes to stdout), with the seconds since the module was imported."""
    print(f"[{time.perf_counter() - _T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def pick_device(name: str) -> torch.device:
    """`auto`: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return dev


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_label(device: torch.device) -> str:
    """What the numbers were measured on, for the table header and the CSV."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def versions() -> str:
    import lightning

    return f"torch {torch.__version__}, lightning {lightning.__version__}, python {platform.python_version()}"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_matmul(n: int, dtype: torch.dtype, device: torch.device, reps: int, warmup: int = 3) -> float:
    """FLOP/s of one square [n, n] x [n, n] matmul in `dtype`, repeated `reps` times after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def matmul_rate(device: torch.device, quick: bool) -> tuple[float, str]:
    """Measured dense matrix-multiply rate in FLOP/s: bf16 on a GPU (the MFU denominator), fp32 on the CPU;
    returns (rate, description)."""
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = (512 if quick else 2048), torch.float32, (5 if quick else 10)
    rate = time_matmul(n, dtype, device, reps)
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    return rate, f"{name} matmul {n}x{n}x{n}: {rate / 1e12:.2f} TFLOP/s"


def status_kb(field: str, pid: int | str = "self") -> float:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


class PeakMemory:
    """Peak memory of a measured section, in MB.

    GPU: `torch.cuda.max_memory_allocated` after a reset (tensors only, the allocator's cache excluded).
    CPU: the process's resident-set high-water mark (reset through /proc/self/clear_refs) minus the RSS at
    the start, so it counts what the section added; without clear_refs (non-Linux) it reports None.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "GPU allocated" if device.type == "cuda" else "RSS above start"
        self.base = 0.0
        self.exact = True

    def start(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = status_kb("VmRSS")
        except (OSError, RuntimeError):
            self.exact = False
        return self

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if not self.exact:
            return None
        return max(0.0, status_kb("VmHWM") - self.base) / 1024.0


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(rows: Sequence[dict[str, str]], right: set[str]) -> str:
    """A Markdown pipe table (plain-text readable, pasteable into README.md); `right` columns align right."""
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}

    def line(cells: dict[str, str]) -> str:
        parts = [cells[c].rjust(width[c]) if c in right else cells[c].ljust(width[c]) for c in cols]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (width[c] + 1) + ":") if c in right else "-" * (width[c] + 2) for c in cols)
    return "\n".join([line({c: c for c in cols}), sep + "|", *(line(r) for r in rows)])


def write_csv(path: Path, rows: Sequence[dict[str, object]]) -> None:
    """Rows (same keys) to `path`: written to a temp file beside it, then moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


@dataclass(kw_only=True)
class Outcome:
    """The status part of a table row: ok, skipped (could not run here, and why) or failed (and how)."""

    status: str = "ok"
    note: str = ""

    def mark(self, status: str, err: BaseException, width: int = 200) -> None:
        """Set `status` with the error's type and first line as the note."""
        lines = str(err).splitlines()
        self.status, self.note = status, f"{type(err).__name__}: {lines[0] if lines else ''}"[:width]


class BenchParser(argparse.ArgumentParser):
    """The flags every throughput benchmark has: --quick, --only (from `only`), --device, --out; `parse_args`
    turns --out into the CSV path (`out_csv`: the script's default, under results/quick/ for --quick)."""

    def __init__(self, doc: str | None, script: str, quick: str, only: Sequence[str], device: bool = True):
        super().__init__(description=(doc or script).splitlines()[0])
        self.script = script
        self.add_argument("--quick", action="store_true", help=quick)
        self.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(only)}")
        if device:
            self.add_argument(
                "--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ..."
            )
        self.add_argument(
            "--out",
            type=Path,
            default=None,
            help=f"CSV path (default results/{script}.csv; --quick: results/quick/)",
        )

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        ns = super().parse_args(args, namespace)
        ns.out = out_csv(ns.out, ns.quick, self.script)
        return ns


def header(device: torch.device, rate: str) -> None:
    """The run's first lines: what it runs on, the matrix rate it measured and the load average."""
    print(f"device: {device_label(device)}; {versions()}")
    print(f"{rate}; load average at start {loadavg()}")


def finish(path: Path, rows: Sequence[dict[str, object]], failed: Sequence[str]) -> int:
    """Write the CSV, say where (and the load average), name what failed; the script's exit code."""
    write_csv(path, rows)
    print(f"CSV written to {path}; load average at end {loadavg()}")
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    return 0
