"""`benchmarks/evaluator.py --quick` runs end to end: exit code 0, every case in the table, a CSV written."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "evaluator.py"
CASES = ("person_t2i", "coco_5k", "itm_pairwise", "function_100k")


def test_quick_benchmark_runs(tmp_path: Path) -> None:
    out_csv = tmp_path / "evaluator.csv"  # never overwrite the committed full-run results
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out_csv)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    for case in CASES:
        assert any(line.startswith(f"| {case} ") for line in table), f"{case} missing from:\n{proc.stdout}"
    assert "MISMATCH" not in proc.stdout
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["case"] for r in rows} == set(CASES)
    ours = [r for r in rows if r["impl"] == "ours"]
    assert len(ours) == len(CASES) and all(r["status"] == "ok" for r in ours)
