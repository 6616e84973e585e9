"""`python -m experiments.sweep ... --status | --cancel`: where every cell of a sweep stands, for local and
SLURM sweeps alike, and stopping what still runs.

A cell is **done** when its run directory holds result.json; **running** when a local sweep's process runs
it (`<run dir>/.running` names a live pid) or its SLURM job runs; **pending** when its SLURM job waits in
the queue, or when nothing has run it yet; **failed** when its latest attempt is in sweep_failures.jsonl (or
its SLURM job left the queue without a result), shown with the job id and the cause line of its log.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments import slurm
from experiments.sweep import LOCK_FILE, LOG_FILE, RUNNING_FILE, Planned, read_failures


@dataclass
class CellState:
    planned: Planned
    status: str  # done | running | pending | failed | error
    job_id: str = ""
    detail: str = ""


def _pid_alive(path: Path) -> int | None:
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def states(planned: Sequence[Planned], runs_root: Path) -> list[CellState]:
    """The state of every cell, from the run directories, the failures file and squeue."""
    jobs = slurm.read_jobs(runs_root)
    ids = [jobs[str(p.run_dir)]["job_id"] for p in planned if str(p.run_dir) in jobs]
    queued: dict[str, str] = {}
    if ids:
        try:
            queued = slurm.queue_states(ids)
        except (slurm.LauncherError, OSError):
            queued = {}
    failures: dict[str, dict[str, Any]] = {}
    for f in read_failures(runs_root):
        failures[str(f.get("run_dir"))] = f
    out = []
    for p in planned:
        if p.run_dir is None:
            out.append(CellState(p, "error", detail=p.error))
            continue
        key = str(p.run_dir)
        job = jobs.get(key, {}).get("job_id", "")
        if p.finished:
            out.append(CellState(p, "done", job, str(p.run_dir)))
        elif (pid := _pid_alive(p.run_dir / RUNNING_FILE)) is not None:
            out.append(CellState(p, "running", "", f"local pid {pid}"))
        elif job in queued:
            state = queued[job]
            out.append(CellState(p, "running" if state == "RUNNING" else "pending", job, state))
        elif key in failures:
            f = failures[key]
            why = (
                slurm.cause_line(f["log"])
                if f.get("log") and Path(f["log"]).is_file()
                else f.get("reason", "")
            )
            out.append(CellState(p, "failed", str(f.get("job_id", job or "")), why))
        elif job:  # submitted, gone from the queue, no result and no failure recorded yet
            out.append(CellState(p, "failed", job, slurm.cause_line(p.run_dir / LOG_FILE)))
        else:
            out.append(CellState(p, "pending", "", "not started"))
    return out


_STYLE = {"done": "green", "running": "cyan", "pending": "yellow", "failed": "red", "error": "red"}


def show(planned: Sequence[Planned], runs_root: Path) -> int:
    """Print the status table and the counts; exit status 0."""
    rows = states(planned, runs_root)
    table = Table(title=f"sweep in {runs_root}")
    for col in ("cell", "status", "job", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r.planned.cell.label, f"[{_STYLE[r.status]}]{r.status}[/]", r.job_id, r.detail)
    console = Console()
    console.print(table)
    counts = {s: sum(r.status == s for r in rows) for s in _STYLE}
    console.print(f"{len(rows)} cells: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return 0


def cancel(planned: Sequence[Planned], runs_root: Path) -> int:
    """Cancel the SLURM jobs of unfinished cells and stop a local sweep holding the root's lock."""
    rows = states(planned, runs_root)
    jobs = [r.job_id for r in rows if r.status in ("running", "pending") and r.job_id]
    slurm.cancel(jobs)
    stopped = ""
    holder = _pid_alive(runs_root / LOCK_FILE) if (runs_root / LOCK_FILE).is_file() else None
    if holder is not None and holder != os.getpid() and any(r.detail.startswith("local pid") for r in rows):
        os.kill(holder, signal.SIGTERM)  # the sweep ends its cells, which save their checkpoints
        stopped = f"; stopped the local sweep (pid {holder})"
    print(f"cancelled {len(jobs)} SLURM job(s){stopped}")
    return 0
