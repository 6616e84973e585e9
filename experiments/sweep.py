"""`python -m experiments.sweep`: run every method x dataset x seed cell, resumably, then build leaderboards.

    python -m experiments.sweep --methods irra,clip_ft --datasets rstpreid --seeds 0,1,2 --profile paper \\
        [--jobs N] [--devices 0,1] [--runs-root runs] [--out results] [--dry-run] \\
        [--extra "--trainer.max_epochs 2"]

docs/architecture.md "Scale" (what users of other sweep tools missed):
- **grid**: every named (or, with `all`, every registered) method x dataset whose tasks intersect. A pair that
  cannot run is skipped, but a named method or dataset left with no cell is an error that says why
  ("tirg supports composed; rstpreid is text-image").
- **one process per cell**: `python -m fgbench fit --config data/<d>.yaml --config method/<m>.yaml
  --config profile/<p>.yaml [--config experiment/<m>_<d>.yaml] --seed_everything <s> --run.root <runs-root>
  <extra>`, its output in `<run dir>/sweep.log`. The experiment config (dataset name with `_` for `-`) holds a
  paper table's recipe for that pair (e.g. TERAN's batch 40 on COCO); it is added to paper-profile cells only.
  With `--devices`, each running cell gets one of them as CUDA_VISIBLE_DEVICES.
- **resume**: a cell is finished when its run directory holds result.json. The directory is resolved from
  the same arguments by the same CLI (fgbench.cells), so a restarted sweep skips exactly the finished cells.
- **failures** are appended to `<runs-root>/sweep_failures.jsonl` (with the log's tail) and the other cells
  go on; the exit status is 1 when any cell failed.
- **one sweep per runs root**: an exclusive `fcntl.flock` on `<runs-root>/.sweep.lock`; a second sweep on
  the same root exits at once (status 3) naming the holder's pid.
- a cell's process dies with the sweep (SIGTERM/SIGINT stop them; Linux's parent-death signal covers SIGKILL).

Module-level imports stay light: the same module is the children's exec shim (`--exec-child`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

from fgbench.errors import cli_entry

CONFIGS = Path(__file__).resolve().parent / "configs"
LOCK_FILE = ".sweep.lock"
FAILURES_FILE = "sweep_failures.jsonl"
LOG_FILE = "sweep.log"
RUNNING_FILE = ".running"  # in a run directory while a local sweep's process runs it (holds its pid)
TAIL_CHARS = 4000  # of a failed cell's log kept in the failures file
EXIT_LOCKED = 3
PARENT_ENV = "FGBENCH_SWEEP_PID"


class GridError(ValueError):
    """A sweep request that names something unknown or a pair that cannot run."""


# -- the grid --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A method or dataset of the grid: its name, config file and the tasks its class declares."""

    name: str
    config: Path
    tasks: frozenset[str]


def config_class(path: Path, key: str) -> type:
    """The class named by `<key>.class_path` in a config file."""
    import yaml

    from fgbench.registry import DATAMODULES, METHODS, resolve

    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    class_path = (cfg.get(key) or {}).get("class_path")
    if not class_path:
        raise GridError(f"{path}: no {key}.class_path")
    return resolve(class_path, METHODS if key == "model" else DATAMODULES)


def experiment_config(configs: Path, method: str, dataset: str) -> Path:
    """Where the paper-table recipe of `method` on `dataset` lives (it may not exist)."""
    return configs / "experiment" / f"{method}_{dataset.replace('-', '_')}.yaml"


def is_pattern(spec: str) -> bool:
    """`all` or a glob such as `synth-*`: names picked from the registry, not named one by one."""
    return spec == "all" or any(ch in spec for ch in "*?[")


def entries(kind: str, spec: str, configs: Path) -> list[Entry]:
    """Entries of `kind` ("method" or "data") for a comma list, `all` (every registered name) or a glob.

    A name is runnable when `configs/<kind>/<name>.yaml` exists, or `configs/<kind>/<name>.yaml` inside a
    plugin folder of FGBENCH_PLUGINS (docs/plugins.md); `all` and globs skip (and report) a registered name
    without a config, an explicit name without one is an error.
    """
    import fnmatch

    from fgbench.registry import DATAMODULES, METHODS, config_folders

    registry = METHODS if kind == "method" else DATAMODULES
    key = "model" if kind == "method" else "data"
    folders = config_folders(configs, kind)
    folder = folders[0]

    def config(name: str) -> Path | None:
        return next((f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()), None)

    if is_pattern(spec):
        chosen = [n for n in registry.list() if fnmatch.fnmatch(n, "*" if spec == "all" else spec)]
        names = [n for n in chosen if config(n)]
        for n in sorted(set(chosen) - set(names)):
            print(f"note: registered {kind} {n!r} has no {folder / n}.yaml; not swept", file=sys.stderr)
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    out = []
    for name in names:
        path = config(name)
        if path is None:
            known = ", ".join(sorted({p.stem for f in folders for p in f.glob("*.yaml")})) or "none"
            raise GridError(f"unknown {kind} {name!r}: no {folder / name}.yaml; available: {known}")
        out.append(Entry(name, path, frozenset(getattr(config_class(path, key), "tasks", ()))))
    if not out:
        raise GridError(f"no {kind} matches {spec!r} (registered with a config in {folder})")
    return out


def _tasks(e: Entry) -> str:
    return ", ".join(sorted(e.tasks)) or "no task"


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    method: Entry
    dataset: Entry
    seed: int
    profile: Path

    @property
    def label(self) -> str:
        return f"{self.dataset.name}/{self.method.name}/{self.profile.stem} seed{self.seed}"

    @property
    def experiment(self) -> Path | None:
        """`configs/experiment/<method>_<dataset>.yaml`, a paper table's recipe, for paper-profile cells."""
        if self.profile.stem != "paper":
            return None
        path = experiment_config(self.profile.parent.parent, self.method.name, self.dataset.name)
        return path if path.is_file() else None

    def fit_args(self, runs_root: Path, extra: Sequence[str]) -> list[str]:
        """The `python -m fgbench` arguments of this cell (the progress bar off: its output goes to a log)."""
        return [
            "fit",
            "--config", str(self.dataset.config),
            "--config", str(self.method.config),
            "--config", str(self.profile),
            *(["--config", str(self.experiment)] if self.experiment else []),
            "--seed_everything", str(self.seed),
            "--run.root", str(runs_root),
            "--trainer.enable_progress_bar", "false",
            *extra,
        ]  # fmt: skip


def expand_grid(
    methods: Sequence[Entry],
    datasets: Sequence[Entry],
    seeds: Sequence[int],
    profile: Path,
    named: tuple[bool, bool] = (True, True),
) -> list[Cell]:
    """Every compatible method x dataset x seed, in dataset, method, seed order.

    `named` says whether the methods and the datasets were named explicitly (not `all`): an explicitly
    named one that pairs with nothing is an error naming the tasks on both sides.
    """
    pairs = [(m, d) for d in datasets for m in methods if m.tasks & d.tasks]
    if named[0]:
        for m in methods:
            if not any(pm is m for pm, _ in pairs):
                why = "; ".join(f"{d.name} is {_tasks(d)}" for d in datasets)
                raise GridError(f"{m.name} supports {_tasks(m)}; {why}")
    if named[1]:
        for d in datasets:
            if not any(pd is d for _, pd in pairs):
                why = "; ".join(f"{m.name} supports {_tasks(m)}" for m in methods)
                raise GridError(f"{d.name} is {_tasks(d)}; {why}")
    return [Cell(m, d, s, profile) for m, d in pairs for s in seeds]


def build_grid(args: argparse.Namespace) -> list[Cell]:
    """The cells a command line asks for."""
    configs = Path(args.configs)
    profile = configs / "profile" / f"{args.profile}.yaml"
    if not profile.is_file():
        known = ", ".join(sorted(p.stem for p in (configs / "profile").glob("*.yaml")))
        raise GridError(f"unknown profile {args.profile!r}: no {profile}; available: {known}")
    methods = entries("method", args.methods, configs)
    datasets = entries("data", args.datasets, configs)
    named = (not is_pattern(args.methods), not is_pattern(args.datasets))
    return skip_cells(expand_grid(methods, datasets, args.seeds, profile, named), args.skip)


def skip_cells(cells: list[Cell], skip: Sequence[str]) -> list[Cell]:
    """Drop the cells whose `method@dataset` matches a `--skip` pattern (globs allowed, e.g. `racg@synth-*`).

    A pattern that matches no cell of the grid is an error: a misspelt skip would otherwise run what the
    user meant to leave out."""
    import fnmatch

    for pattern in skip:
        if "@" not in pattern:
            raise GridError(
                f"--skip {pattern!r}: expected METHOD@DATASET (globs allowed), e.g. racg@synth-person"
            )
        if not any(fnmatch.fnmatch(f"{c.method.name}@{c.dataset.name}", pattern) for c in cells):
            pairs = ", ".join(dict.fromkeys(f"{c.method.name}@{c.dataset.name}" for c in cells))
            raise GridError(f"--skip {pattern!r} matches no cell of this grid ({pairs})")
    return [
        c for c in cells if not any(fnmatch.fnmatch(f"{c.method.name}@{c.dataset.name}", p) for p in skip)
    ]


def _option(extra: Sequence[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in a list of fit arguments (the last one wins)."""
    value = None
    for i, tok in enumerate(extra):
        if tok == name and i + 1 < len(extra):
            value = extra[i + 1]
        elif tok.startswith(name + "="):
            value = tok.split("=", 1)[1]
    return value


def accelerator_problem(profile: Path, extra: Sequence[str], devices: Sequence[str]) -> str | None:
    """Why the cells cannot run on this machine (a GPU asked for, none usable), or None.

    Checked before any cell starts: otherwise every cell fails alike, its cause in its own log.
    """
    import yaml

    cfg = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    from_profile = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    given = _option(extra, "--trainer.accelerator")
    accelerator = (given or from_profile).lower()
    source = "--extra" if given else f"profile {profile.stem} ({profile})"
    wants_gpu = accelerator in ("gpu", "cuda")
    if not (wants_gpu or devices or accelerator == "mps"):
        return None
    import torch

    if accelerator == "mps":
        if torch.backends.mps.is_available():
            return None
        return f"--trainer.accelerator mps (from {source}) but this machine has no usable MPS device"
    if torch.cuda.is_available():
        if devices and len(devices) > torch.cuda.device_count():
            return f"--devices {','.join(devices)} names more GPUs than the {torch.cuda.device_count()} found"
        return None
    why = (
        f"--trainer.accelerator {accelerator} (from {source})"
        if wants_gpu
        else f"--devices {','.join(devices)}"
    )
    return (
        f"the cells ask for a GPU ({why}) but this machine has none that PyTorch can use; "
        'add --extra "--trainer.accelerator cpu" (and drop --devices), or run on a GPU machine'
    )


# -- resolving run directories ---------------------------------------------------------------------------


@dataclass
class Planned:
    """A cell with its command and run directory (None when its config does not parse)."""

    cell: Cell
    args: list[str]
    run_dir: Path | None
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.run_dir is not None and (self.run_dir / "result.json").is_file()


def plan(cells: Sequence[Cell], runs_root: Path, extra: Sequence[str]) -> list[Planned]:
    """Resolve every cell's run directory without training (a config parse each)."""
    from fgbench.cells import resolve_run

    out = []
    for cell in cells:
        args = cell.fit_args(runs_root, extra)
        try:
            out.append(Planned(cell, args, resolve_run(args).directory))
        except (ValueError, ImportError, AttributeError) as err:
            out.append(Planned(cell, args, None, str(err)))
    return out


# -- the lock and the failures file ----------------------------------------------------------------------


class SweepLocked(RuntimeError):
    """Another sweep holds the runs root."""


@contextmanager
def sweep_lock(runs_root: Path) -> Iterator[Path]:
    """Hold an exclusive flock on `<runs-root>/.sweep.lock` (released on exit, also when killed)."""
    import fcntl

    runs_root.mkdir(parents=True, exist_ok=True)
    path = runs_root / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise SweepLocked(
                f"another sweep (pid {holder}) is writing to {runs_root} (lock {path}); "
                "wait for it to finish, or use another --runs-root"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_failures_lock = threading.Lock()


def record_failure(runs_root: Path, entry: dict[str, Any]) -> Path:
    """Append one JSON line to the failures file; the whole file is replaced atomically under a lock."""
    from fgbench.io import atomic_write_text

    path = runs_root / FAILURES_FILE
    with _failures_lock:
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        return atomic_write_text(path, old + json.dumps(entry, sort_keys=True) + "\n")


def read_failures(runs_root: Path) -> list[dict[str, Any]]:
    path = runs_root / FAILURES_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def cause_line(log: Path) -> str:
    """The line of a failed cell's log that says why: its `error: ...` line, else the exception line."""
    import re

    lines = [ln.strip() for ln in _tail(log).splitlines() if ln.strip()]
    for pattern in (
        r"^(\S+: )?error: ",
        r"^[\w.]*(Error|Exception)(\[\w+\])?: ",
        r"^[\w.]*(Error|Exception)\b",
    ):
        for line in reversed(lines):
            if re.search(pattern, line):
                return line[:300]
    return lines[-1][:300] if lines else ""


# -- running cells ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one cell ended: done | skipped | failed | interrupted."""

    planned: Planned
    status: str
    seconds: float = 0.0
    returncode: int | None = None
    log: Path | None = None


@dataclass
class Runner:
    """Runs planned cells, `jobs` at a time, each on its own device when devices are given."""

    runs_root: Path
    jobs: int = 1
    devices: list[str] = field(default_factory=list)
    python: str = sys.executable
    resume_from_last: bool = False  # continue an unfinished cell from its checkpoints/last.ckpt
    stopping: threading.Event = field(default_factory=threading.Event)
    _procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._free: Queue[str | None] = Queue()
        for d in self.devices or [None] * self.jobs:
            self._free.put(d)

    def run_cell(self, p: Planned) -> Outcome:
        if self.stopping.is_set():
            return Outcome(p, "interrupted")
        if p.run_dir is None:
            self._fail(p, None, None, p.error)
            return Outcome(p, "failed")
        device = self._free.get()
        start = time.perf_counter()
        log = p.run_dir / LOG_FILE
        fit_args = list(p.args)
        last = p.run_dir / "checkpoints" / "last.ckpt"
        if self.resume_from_last and last.is_file():
            fit_args += ["--ckpt_path", str(last)]  # unhashed: the same run directory
        try:
            code = self._spawn(fit_args, device, log)
        finally:
            self._free.put(device)
        seconds = time.perf_counter() - start
        if self.stopping.is_set():
            return Outcome(p, "interrupted", seconds, code, log)
        if code == 0 and p.finished:
            return Outcome(p, "done", seconds, code, log)
        why = f"exit {code}" if code else "exit 0 but no result.json"
        self._fail(p, code, log, why)
        return Outcome(p, "failed", seconds, code, log)

    def _spawn(self, fit_args: list[str], device: str | None, log: Path) -> int:
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        cmd = [
            self.python,
            "-m",
            "experiments.sweep",
            "--exec-child",
            self.python,
            "-m",
            "fgbench",
            *fit_args,
        ]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w", encoding="utf-8") as out:
            out.write(
                "$ " + shlex.join(cmd[4:]) + (f"  # CUDA_VISIBLE_DEVICES={device}" if device else "") + "\n"
            )
            out.flush()
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            with self._lock:
                self._procs[proc.pid] = proc
            (log.parent / RUNNING_FILE).write_text(str(proc.pid), encoding="utf-8")
            if self.stopping.is_set():  # stop() ran between the check in run_cell and the spawn
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait()
            finally:
                (log.parent / RUNNING_FILE).unlink(missing_ok=True)
                with self._lock:
                    self._procs.pop(proc.pid, None)

    def _fail(self, p: Planned, code: int | None, log: Path | None, why: str) -> None:
        record_failure(self.runs_root, _failure_entry(p, code, log, why))

    def stop(self) -> None:
        """Stop every running cell (its whole process group) and start no new one."""
        self.stopping.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _failure_entry(p: Planned, code: int | None, log: Path | None, why: str) -> dict[str, Any]:
    """One line of sweep_failures.jsonl."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cell": p.cell.label,
        "dataset": p.cell.dataset.name,
        "method": p.cell.method.name,
        "profile": p.cell.profile.stem,
        "seed": p.cell.seed,
        "run_dir": str(p.run_dir) if p.run_dir else None,
        "returncode": code,
        "reason": why,
        "command": shlex.join(["python", "-m", "fgbench", *p.args]),
        "log": str(log) if log else None,
        "stderr_tail": _tail(log) if log else why,
    }


class _Stop(Exception):  # noqa: N818 - raised by the SIGTERM handler
    pass


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_all(planned: Sequence[Planned], runner: Runner) -> list[Outcome]:
    """Skip finished cells, run the others with a progress display; SIGTERM/Ctrl-C stop them all."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn

    outcomes = [Outcome(p, "skipped") for p in planned if p.finished]
    todo = [p for p in planned if not p.finished]
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    columns = (SpinnerColumn(), "{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress, ThreadPoolExecutor(max_workers=runner.jobs) as pool:
        task = progress.add_task(f"sweep ({len(outcomes)} finished before)", total=len(todo))
        futures: dict[Future[Outcome], Planned] = {pool.submit(runner.run_cell, p): p for p in todo}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    o = fut.result()
                    outcomes.append(o)
                    progress.advance(task)
                    progress.console.print(_line(o))
        except (KeyboardInterrupt, _Stop) as err:
            progress.console.print(
                f"[yellow]stopping ({err or 'interrupt'}): ending the running cells[/yellow]"
            )
            runner.stop()
            for fut in futures:
                fut.cancel()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    return outcomes


_MARK = {"done": "[green]✓[/green]", "failed": "[red]✗[/red]", "interrupted": "[yellow]-[/yellow]"}


def _line(o: Outcome) -> str:
    text = f"{_MARK.get(o.status, '')} {o.planned.cell.label}  {o.status} in {o.seconds:.0f} s"
    if o.status == "failed":
        text += f"  (exit {o.returncode}; log {o.log or '-'})"
    return text


def summary(outcomes: Sequence[Outcome], seconds: float) -> str:
    """A one-line count of done / skipped / failed cells and the wall time."""
    count = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "interrupted")}
    parts = [f"{v} {k}" for k, v in count.items() if v or k != "interrupted"]
    return f"{len(outcomes)} cells: " + ", ".join(parts) + f"; wall time {seconds:.0f} s"


# -- command line ----------------------------------------------------------------------------------------


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run method x dataset x seed cells (resumable), then build the leaderboards.",
    )
    p.add_argument("--methods", required=True, help="comma list of registry names, all, or a glob")
    p.add_argument("--datasets", required=True, help="comma list of registry names, all, or a glob (synth-*)")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma list, default 0")
    p.add_argument(
        "--profile", default="tiny", help="configs/profile/<name>.yaml: tiny | paper (default tiny)"
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="cells side by side (default: 1, or one per device)"
    )
    p.add_argument("--devices", default="", help="GPU ids, one per running cell, e.g. 0,1")
    p.add_argument("--runs-root", default="runs", help="run directories go here (default runs)")
    p.add_argument("--out", default="results", help="runs.csv and leaderboards/ go here (default results)")
    p.add_argument(
        "--extra", default="", help='more fit arguments for every cell, e.g. "--trainer.max_epochs 2"'
    )
    p.add_argument("--configs", default=str(CONFIGS), help="config folder with data/ method/ profile/")
    p.add_argument(
        "--dry-run", action="store_true", help="list the cells, their status and commands; run nothing"
    )
    p.add_argument(
        "--resume-from-last",
        action="store_true",
        help="continue an unfinished cell from its last.ckpt (only when the code has not changed since)",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="METHOD@DATASET",
        help="leave out a method on a dataset (globs allowed; repeatable), e.g. racg@synth-person",
    )
    p.add_argument("--no-leaderboard", action="store_true", help="do not build the leaderboards at the end")
    p.add_argument(
        "--launcher",
        default="local",
        choices=["local", "slurm"],
        help="local: cells as processes on this machine (default); slurm: one SLURM job array (submitit)",
    )
    p.add_argument(
        "--slurm-config", help="YAML file of SLURM settings (experiments/configs/launcher/slurm.yaml)"
    )
    p.add_argument(
        "--slurm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SLURM setting, e.g. --slurm partition=gpu (repeatable; wins over --slurm-config)",
    )
    p.add_argument(
        "--throttle", type=int, default=None, help="slurm: at most N cells at once (the array's %%N)"
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="print every cell as done / running / pending / failed; run nothing",
    )
    p.add_argument(
        "--cancel",
        action="store_true",
        help="cancel the sweep's running and pending cells (SLURM jobs or local)",
    )
    return p


def _jobs(args: argparse.Namespace, devices: list[str]) -> int:
    jobs = args.jobs or max(1, len(devices))
    if jobs < 1:
        raise GridError(f"--jobs must be at least 1, got {jobs}")
    if devices and jobs > len(devices):
        raise GridError(f"--jobs {jobs} needs as many --devices (one GPU per cell), got {','.join(devices)}")
    return jobs


def run_slurm(planned: Sequence[Planned], settings: Any, runs_root: Path) -> list[Outcome]:
    """Run the unfinished cells as one SLURM job array and wait for them (experiments.slurm)."""
    from experiments import slurm

    start = time.perf_counter()
    outcomes = [Outcome(p, "skipped") for p in planned if p.finished]
    for p in planned:
        if p.run_dir is None:
            record_failure(runs_root, _failure_entry(p, None, None, p.error))
            outcomes.append(Outcome(p, "failed"))
    ended = slurm.run_cells(planned, settings, runs_root)
    seconds = time.perf_counter() - start
    for p in planned:
        if p.run_dir is None or str(p.run_dir) not in ended:
            continue
        status, job, why = ended[str(p.run_dir)]
        log = p.run_dir / LOG_FILE
        if status == "failed":
            entry = _failure_entry(p, None, log, why)
            record_failure(runs_root, {**entry, "job_id": job, "launcher": "slurm"})
        outcomes.append(Outcome(p, status, seconds, None, log))
    return outcomes


def dry_run(planned: Sequence[Planned]) -> None:
    for p in planned:
        status = "error" if p.run_dir is None else "finished" if p.finished else "pending"
        print(f"[{status}] {p.cell.label}  {p.run_dir or p.error}")
        print("    python -m fgbench " + shlex.join(p.args))
    n_done = sum(p.finished for p in planned)
    print(f"{len(planned)} cells: {n_done} finished, {len(planned) - n_done} to run")


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--exec-child"]:
        return exec_child(argv[1:])
    args = parser().parse_args(argv)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    runs_root = Path(args.runs_root)
    try:
        extra = shlex.split(args.extra)
    except ValueError as err:
        raise GridError(f"--extra {args.extra!r} cannot be split into arguments ({err})") from None
    jobs = _jobs(args, devices)
    cells = build_grid(args)
    settings = None
    if args.launcher == "slurm" and not (args.status or args.cancel or args.dry_run):
        from experiments import slurm

        overrides = [*args.slurm, *([f"throttle={args.throttle}"] if args.throttle is not None else [])]
        settings = slurm.SlurmSettings.load(args.slurm_config, overrides)  # LauncherError: one message
        slurm.require_slurm()
    # local cells run here, so this machine must have what they ask for; SLURM cells run on compute nodes
    if not (args.dry_run or args.status or args.cancel) and settings is None:
        problem = accelerator_problem(cells[0].profile, extra, devices)
        if problem:
            raise GridError(problem)
    planned = plan(cells, runs_root, extra)
    if args.dry_run:
        dry_run(planned)
        return 0
    if args.status or args.cancel:
        from experiments import sweep_state

        return sweep_state.cancel(planned, runs_root) if args.cancel else sweep_state.show(planned, runs_root)
    if all(p.run_dir is None for p in planned):  # the arguments themselves are wrong: nothing can run
        raise GridError(f"no cell's arguments parse; the first says: {planned[0].error}")
    start = time.perf_counter()
    try:
        with sweep_lock(runs_root):
            if settings is not None:
                outcomes = run_slurm(planned, settings, runs_root)
            else:
                outcomes = run_all(
                    planned, Runner(runs_root, jobs, devices, resume_from_last=args.resume_from_last)
                )
    except SweepLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except (KeyboardInterrupt, _Stop):
        print("sweep stopped; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary(outcomes, time.perf_counter() - start))
    for o in outcomes:
        if o.status == "failed":
            cause = o.planned.error or (cause_line(o.log) if o.log else "") or f"exit {o.returncode}"
            print(f"  failed: {o.planned.cell.label}: {cause}")
            print(f"          see {o.log or runs_root / FAILURES_FILE}")
    if not args.no_leaderboard:
        from experiments.leaderboard import build, print_boards

        report = build(runs_root, args.out)
        print_boards(report)
        print(f"leaderboards: {Path(args.out) / 'leaderboards'} ({len(report.written)} files written)")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def exec_child(cmd: Sequence[str]) -> int:
    """Become `cmd` after asking Linux to SIGTERM us when the sweep dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.environ.get(PARENT_ENV) and str(os.getppid()) != os.environ[PARENT_ENV]:
            return 143  # the sweep died before the signal was armed
    os.execv(cmd[0], list(cmd))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
