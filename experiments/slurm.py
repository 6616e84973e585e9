"""The SLURM launcher of `experiments.sweep` (`--launcher slurm`), through submitit.

One sweep submits one job array: one array task per unfinished cell, at most `throttle` at once. A task runs
the cell's usual `python -m fgbench fit ...` command with its output appended to `<run dir>/sweep.log`, so
the run directory, its hash, result.json and the leaderboard are the same as with the local launcher.

- **Multi-GPU cells** run as Lightning DDP under SLURM: one task per GPU (`gpus_per_cell` tasks per node,
  `nodes` nodes); Lightning's SLURM environment reads the ranks from SLURM's variables, and the cell gets
  `--trainer.devices/num_nodes/strategy` to match.
- **Preemption and time limits**: SLURM sends SIGUSR2 `signal_delay_s` before the limit (submitit calls
  `CellJob.checkpoint`, which stops the fit with SIGTERM and requeues the task), and SIGTERM before a
  preemption or an `scontrol requeue`. On SIGTERM the fit saves `checkpoints/last.ckpt` at the end of the
  current batch (`fgbench.preemption.SaveOnSignal`) and exits; the requeued task resumes from it exactly,
  mid-epoch included, with metrics.csv and sweep.log continued.
- **A cell never runs twice at once**: the task holds an exclusive lock on `<run dir>/.cell.lock` (on the
  shared filesystem); a sweep re-run while its jobs are queued waits for them instead of submitting again.
- **Job states** come from `squeue` (a job that left the queue has ended: done when its result.json exists,
  failed otherwise), so no SLURM accounting database is needed.

Settings (`SlurmSettings`) come from a YAML file (`--slurm-config`, e.g. experiments/configs/launcher/
slurm.yaml) and `--slurm KEY=VALUE` options, and are recorded in each cell's result.json ("launcher").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

JOBS_FILE = "slurm_jobs.jsonl"
CELL_LOCK = ".cell.lock"
LAUNCHER_ENV = "FGBENCH_LAUNCHER"  # JSON of the launcher record, written into result.json by the fit
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
}


class LauncherError(ValueError):
    """Bad launcher settings (unknown key, wrong type) or SLURM commands that are not available."""


@dataclass
class SlurmSettings:
    """What every cell of a SLURM sweep asks the scheduler for (one `#SBATCH` line each)."""

    partition: str | None = None  # --partition
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    time: str = "24:00:00"  # time limit per cell: minutes or [D-]HH:MM[:SS]
    gpus_per_cell: int = 1  # GPUs per node; one task per GPU (0: a CPU cell, one task)
    nodes: int = 1  # nodes per cell (multi-node DDP when > 1)
    cpus_per_task: int = 8  # CPU cores per task (data loading workers + 1)
    mem_gb: float | None = None  # memory per node in GB (None: the partition's default)
    constraint: str | None = None  # --constraint, e.g. a GPU model
    throttle: int = 0  # at most this many cells at once (the array's %N; 0: no cap)
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 3  # time-limit requeues per cell before it is given up
    setup: list[str] = field(default_factory=list)  # shell lines before the cell (module load, venv)
    extra: dict[str, str] = field(default_factory=dict)  # more #SBATCH options, e.g. {exclude: node3}
    python: str = sys.executable  # the interpreter that runs each cell on the compute nodes

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> SlurmSettings:
        """Settings from a YAML mapping and `KEY=VALUE` overrides (values parsed as YAML)."""
        values: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise LauncherError(f"--slurm-config {p}: file not found")
            try:
                loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as err:
                raise LauncherError(f"--slurm-config {p}: not valid YAML ({err})") from None
            if not isinstance(loaded, dict):
                raise LauncherError(f"--slurm-config {p}: expected a mapping of settings")
            values.update(loaded)
        for item in overrides:
            key, sep, text = item.partition("=")
            if not sep:
                raise LauncherError(f"--slurm expects KEY=VALUE, got {item!r}")
            values[key.strip()] = yaml.safe_load(text)
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SlurmSettings:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise LauncherError(f"unknown SLURM setting(s) {unknown}; valid: {', '.join(fields)}")
        out = cls()
        for key, value in values.items():
            setattr(out, key, _coerce(key, value, getattr(out, key)))
        out.minutes  # validates the time limit  # noqa: B018
        if out.gpus_per_cell < 0 or out.nodes < 1 or out.cpus_per_task < 1 or out.throttle < 0:
            raise LauncherError("gpus_per_cell >= 0, nodes >= 1, cpus_per_task >= 1 and throttle >= 0")
        return out

    @property
    def minutes(self) -> int:
        """The time limit in minutes."""
        return parse_minutes(self.time)

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_cell)

    def executor_parameters(self, n_cells: int) -> dict[str, Any]:
        """submitit SlurmExecutor parameters for an array of `n_cells` cells."""
        extra = {k.replace("-", "_"): v for k, v in self.extra.items()}
        params: dict[str, Any] = {
            "job_name": "fgbench-sweep",
            "time": self.minutes,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "signal_delay_s": self.signal_delay_s,
            "array_parallelism": self.throttle or max(1, n_cells),
            "stderr_to_stdout": True,
            "setup": list(self.setup),
            "additional_parameters": extra,
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "constraint": self.constraint,
            "gpus_per_node": self.gpus_per_cell or None,
            "mem": f"{int(self.mem_gb * 1024)}M" if self.mem_gb else None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params

    def trainer_args(self) -> list[str]:
        """Fit arguments that make a cell use what it was given: devices, nodes and DDP."""
        if self.gpus_per_cell == 0:
            return ["--trainer.num_nodes", str(self.nodes)] if self.nodes > 1 else []
        args = [
            "--trainer.accelerator",
            "gpu",
            "--trainer.devices",
            str(self.gpus_per_cell),
            "--trainer.num_nodes",
            str(self.nodes),
        ]
        if self.gpus_per_cell * self.nodes > 1:
            args += ["--trainer.strategy", "ddp"]
        return args

    def record(self) -> dict[str, Any]:
        return {"launcher": "slurm", **dataclasses.asdict(self)}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a setting's type against its default's (None-defaults take a string or a number)."""
    if key == "time":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise LauncherError(f"SLURM setting time: expected minutes or [D-]HH:MM[:SS], got {value!r}")
        return str(value)
    if key == "setup":
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LauncherError(f"SLURM setting setup: expected a list of shell lines, got {value!r}")
        return value
    if key == "extra":
        if not isinstance(value, dict):
            raise LauncherError(f"SLURM setting extra: expected a mapping of sbatch options, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if key == "mem_gb":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise LauncherError(f"SLURM setting mem_gb: expected a positive number of GB, got {value!r}")
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise LauncherError(f"SLURM setting {key}: expected an integer, got {value!r}")
        return value
    if value is not None and not isinstance(value, (str, int, float)):
        raise LauncherError(f"SLURM setting {key}: expected a string, got {value!r}")
    return None if value is None else str(value)


def parse_minutes(text: str) -> int:
    """SLURM's time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> whole minutes (at least 1)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise LauncherError(f"SLURM setting time: cannot read {text!r} (minutes or [D-]HH:MM[:SS])")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    return max(1, -(-seconds // 60))


# -- one cell as a SLURM task -----------------------------------------------------------------------------


class CellJob(submitit.helpers.Checkpointable):
    """One sweep cell run by a SLURM array task; resumes from last.ckpt after a requeue."""

    def __init__(self, fit_args: Sequence[str], run_dir: str, label: str, record: dict[str, Any]) -> None:
        self.fit_args = list(fit_args)
        self.run_dir = run_dir
        self.label = label
        self.record = record
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None  # a running process is never pickled (checkpoint re-submits the cell)
        return state

    def __call__(self) -> str:
        run_dir = Path(self.run_dir)
        if (run_dir / "result.json").is_file():
            return "done"  # finished before a requeue reached it
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        run_dir.mkdir(parents=True, exist_ok=True)
        with _cell_lock(run_dir, rank):
            args = list(self.fit_args)
            last = run_dir / "checkpoints" / "last.ckpt"
            if last.is_file():
                args += ["--ckpt_path", str(last)]
            job_id = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", ""))
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            record = {
                **self.record,
                "job_id": f"{job_id}_{task}" if task else job_id,
                "restarts": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            }
            env = {**os.environ, LAUNCHER_ENV: json.dumps(record, sort_keys=True)}
            log = run_dir / ("sweep.log" if rank == 0 else f"sweep.rank{rank}.log")
            cmd = [self.record["python"], "-m", "fgbench", *args]
            with open(log, "a", encoding="utf-8") as out:
                out.write(
                    f"# segment {time.strftime('%Y-%m-%dT%H:%M:%S%z')} job {record['job_id']} "
                    f"restart {record['restarts']} host {os.uname().nodename}\n$ {shlex.join(cmd)}\n"
                )
                out.flush()
                self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
                code = self._proc.wait()
        if code != 0 or not (run_dir / "result.json").is_file():
            raise RuntimeError(f"{self.label}: exit {code}; {cause_line(log)}")
        return "done"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Before the time limit: let the fit save last.ckpt and stop, then requeue this cell."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=max(10, int(self.record.get("signal_delay_s", 120)) - 15))
            except subprocess.TimeoutExpired:
                proc.kill()
        return submitit.helpers.DelayedSubmission(
            CellJob(self.fit_args, self.run_dir, self.label, self.record)
        )


class _cell_lock:  # noqa: N801 - used as a context manager
    """An exclusive flock on `<run dir>/.cell.lock` held by the rank-0 task while the cell runs."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.path, self.rank, self.file = run_dir / CELL_LOCK, rank, None

    def __enter__(self) -> None:
        if self.rank != 0:
            return
        import fcntl

        self.file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RuntimeError(
                f"{self.path.parent} is being run by another job; not starting it twice"
            ) from None

    def __exit__(self, *exc: Any) -> None:
        if self.file is not None:
            self.file.close()


# -- the log's cause line -----------------------------------------------------------------------------------


def cause_line(log: Path | str) -> str:
    """The sweep's cause line of a cell's log (experiments.sweep.cause_line), or why there is none: a job
    that never started has no log."""
    from experiments.sweep import cause_line as from_log

    path = Path(log)
    if not path.is_file():
        return "no log"
    return from_log(path) or "empty log"


# -- submitting and watching --------------------------------------------------------------------------------


def require_slurm() -> None:
    """Fail early, with what to do, when this machine has no SLURM client commands."""
    import shutil

    missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        raise LauncherError(
            f"--launcher slurm needs the SLURM commands {', '.join(missing)} on PATH (run the sweep on a "
            "login node of the cluster; for a local test cluster: scripts/slurm-local.sh start)"
        )


def submit(
    cells: Sequence[tuple[Sequence[str], Path, str]], settings: SlurmSettings, folder: Path
) -> list[str]:
    """Submit (fit args, run dir, label) cells as one job array; return the job id of each cell."""
    require_slurm()
    executor = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=settings.max_requeues)
    executor.update_parameters(**settings.executor_parameters(len(cells)))
    record = settings.record()
    jobs = []
    with executor.batch():
        for args, run_dir, label in cells:
            jobs.append(
                executor.submit(CellJob([*args, *settings.trainer_args()], str(run_dir), label, record))
            )
    return [str(j.job_id) for j in jobs]


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """{job id: state} of the jobs still known to squeue (array tasks as ARRAYID_TASK)."""
    if not job_ids:
        return {}
    arrays = sorted({j.split("_")[0] for j in job_ids})
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(arrays)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise LauncherError(f"squeue failed: {out.stderr.strip()}")
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return {j: states[j] for j in job_ids if j in states}


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        require_slurm()
        subprocess.run(["scancel", *job_ids], check=False, capture_output=True, timeout=60)


def record_jobs(runs_root: Path, entries: Sequence[dict[str, Any]]) -> None:
    """Append submitted cells (run_dir, cell, job_id, time) to `<runs-root>/slurm_jobs.jsonl` atomically."""
    from fgbench.io import atomic_write_text

    path = runs_root / JOBS_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, old + "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def read_jobs(runs_root: Path) -> dict[str, dict[str, Any]]:
    """The latest submission of each run directory."""
    path = runs_root / JOBS_FILE
    out: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                out[entry["run_dir"]] = entry
    return out


def run_cells(
    planned: Sequence[Any], settings: SlurmSettings, runs_root: Path, poll_s: float = 5.0
) -> dict[str, tuple[str, str, str]]:
    """Submit the unfinished cells (those not already queued) and wait for every one of them.

    `planned` are the sweep's Planned cells. Returns {run dir: (status, job id, cause)} for the cells that
    were waited for: status done | failed. Ctrl-C stops the waiting, not the jobs.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

    todo = [p for p in planned if not p.finished and p.run_dir is not None]
    known = read_jobs(runs_root)
    queued = queue_states([known[str(p.run_dir)]["job_id"] for p in todo if str(p.run_dir) in known])
    waiting = {
        str(p.run_dir): known[str(p.run_dir)]["job_id"]
        for p in todo
        if str(p.run_dir) in known and known[str(p.run_dir)]["job_id"] in queued
    }
    new = [p for p in todo if str(p.run_dir) not in waiting]
    if waiting:
        print(f"{len(waiting)} cell(s) already queued by an earlier submission: waiting for them")
    if new:
        ids = submit(
            [(p.args, p.run_dir, p.cell.label) for p in new], settings, runs_root.resolve() / ".slurm"
        )
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record_jobs(
            runs_root,
            [
                {"run_dir": str(p.run_dir), "cell": p.cell.label, "job_id": j, "time": now}
                for p, j in zip(new, ids, strict=True)
            ],
        )
        waiting.update({str(p.run_dir): j for p, j in zip(new, ids, strict=True)})
        print(f"submitted {len(new)} cell(s) as SLURM job array {ids[0].split('_')[0]}")
    labels = {str(p.run_dir): p.cell.label for p in todo}
    results: dict[str, tuple[str, str, str]] = {}
    gone: dict[str, int] = {}  # a job must be absent from two polls in a row (a requeue passes through)
    columns = (SpinnerColumn(), "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("slurm cells", total=len(waiting))
        while len(results) < len(waiting):
            states = queue_states([j for d, j in waiting.items() if d not in results])
            for run_dir, job in waiting.items():
                if run_dir in results:
                    continue
                if job in states:
                    gone.pop(run_dir, None)
                    continue
                if (Path(run_dir) / "result.json").is_file():
                    results[run_dir] = ("done", job, "")
                else:
                    gone[run_dir] = gone.get(run_dir, 0) + 1
                    if gone[run_dir] < 2:
                        continue
                    results[run_dir] = ("failed", job, cause_line(Path(run_dir) / "sweep.log"))
                status, _, why = results[run_dir]
                mark = "[green]✓[/green]" if status == "done" else "[red]✗[/red]"
                progress.console.print(
                    f"{mark} {labels[run_dir]}  {status}  (job {job}){'  ' + why if why else ''}"
                )
                progress.advance(task)
            if len(results) < len(waiting):
                time.sleep(poll_s)
    return results
