"""A benchmark's `--quick` run never overwrites the committed full-size table: without `--out` it writes
benchmarks/results/quick/<script>.csv (gitignored); a full run keeps benchmarks/results/<script>.csv."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _bench import QUICK_RESULTS, RESULTS, out_csv  # noqa: E402


def test_default_outputs() -> None:
    assert out_csv(None, False, "evaluator") == RESULTS / "evaluator.csv"
    assert out_csv(None, True, "evaluator") == RESULTS / "quick" / "evaluator.csv"
    assert out_csv(Path("x.csv"), True, "evaluator") == Path("x.csv")
    assert "benchmarks/results/quick/" in (ROOT / ".gitignore").read_text().splitlines()


def test_quick_run_leaves_the_tracked_csv_alone() -> None:
    tracked = RESULTS / "evaluator.csv"
    before = tracked.read_bytes()
    quick = QUICK_RESULTS / "evaluator.csv"
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "evaluator.py"), "--quick", "--only", "person_t2i"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"CSV written to {quick}" in proc.stdout
    assert quick.stat().st_mtime >= start - 1
    assert tracked.read_bytes() == before
