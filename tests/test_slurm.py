"""experiments.sweep on SLURM (experiments.slurm, experiments.sweep_state, fgbench.preemption).

Fast: the job settings submitit writes into the sbatch script (array and throttle, GPUs and tasks, time,
the requeue signal, extra lines), the settings' validation, --status and --cancel of a local sweep, the
cause line, and a fit that saves its checkpoint when it is told to stop.

Slow (a real single-node SLURM started by scripts/slurm-local.sh, root and Debian packages needed): a 2-cell
sweep with --launcher slurm gives the local launcher's results; a cell requeued with `scontrol requeue`
while it trains resumes from its checkpoint with nothing lost or duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from submitit.slurm.slurm import _make_sbatch_string
from test_method_base import TinyDual
from test_sweep import args as sweep_args
from test_sweep import child_env, write_configs

from experiments import slurm, sweep, sweep_state
from fgbench.cli import main as fgbench_main
from fgbench.preemption import EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"


# -- settings and the generated job ----------------------------------------------------------------------


def sbatch_text(settings: slurm.SlurmSettings, n_cells: int, tmp: Path) -> str:
    params = settings.executor_parameters(n_cells)
    return _make_sbatch_string(
        command="python -m submitit.core._submit X", folder=tmp, map_count=n_cells, **params
    )


def test_settings_file_and_overrides_become_sbatch_lines(tmp_path: Path) -> None:
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(
        "partition: gpu\naccount: proj\ntime: '12:00:00'\ngpus_per_cell: 4\nnodes: 2\ncpus_per_task: 6\n"
        "mem_gb: 64\nconstraint: a100\nthrottle: 3\nsetup: ['module load cuda']\nextra: {exclude: node07}\n"
    )
    s = slurm.SlurmSettings.load(cfg, ["qos=high", "throttle=2", "signal_delay_s=90"])
    text = sbatch_text(s, 5, tmp_path)
    for line in [
        "#SBATCH --array=0-4%2",  # one array for the sweep, the command line's throttle wins over the file
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --time=720",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",  # one task per GPU: Lightning's SLURM environment gives each a rank
        "#SBATCH --cpus-per-task=6",
        "#SBATCH --mem=65536M",
        "#SBATCH --constraint=a100",
        "#SBATCH --signal=USR2@90",  # before the time limit: checkpoint and requeue
        "#SBATCH --exclude=node07",
        "module load cuda",
    ]:
        assert line in text, line
    assert s.trainer_args() == [
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "4",
        "--trainer.num_nodes",
        "2",
        "--trainer.strategy",
        "ddp",
    ]
    assert s.record()["partition"] == "gpu" and s.record()["launcher"] == "slurm"


def test_cpu_cell_has_one_task_and_no_gpu_line(tmp_path: Path) -> None:
    s = slurm.SlurmSettings.from_mapping({"gpus_per_cell": 0, "time": 30})
    text = sbatch_text(s, 2, tmp_path)
    assert "#SBATCH --ntasks-per-node=1" in text and "gpus" not in text
    assert "#SBATCH --array=0-1%2" in text and "#SBATCH --time=30" in text
    assert s.trainer_args() == []


@pytest.mark.parametrize(
    ("text", "minutes"), [("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440), ("1-2:30", 1590)]
)
def test_time_formats(text: str, minutes: int) -> None:
    assert slurm.parse_minutes(text) == minutes


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"partitoin": "gpu"}, r"unknown SLURM setting\(s\) \['partitoin'\]; valid: partition"),
        ({"gpus_per_cell": "four"}, "gpus_per_cell: expected an integer, got 'four'"),
        ({"time": "soon"}, "cannot read 'soon'"),
        ({"mem_gb": -1}, "mem_gb: expected a positive number"),
        ({"extra": ["exclude"]}, "extra: expected a mapping"),
    ],
)
def test_bad_settings_name_the_setting(values: dict, message: str) -> None:
    with pytest.raises(slurm.LauncherError, match=message):
        slurm.SlurmSettings.from_mapping(values)


def test_sweep_refuses_bad_settings_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configs = write_configs(tmp_path)
    runs = tmp_path / "runs"
    argv = sweep_args(
        configs,
        "tiny_dual",
        "rstpreid",
        "--runs-root",
        str(runs),
        "--launcher",
        "slurm",
        "--slurm",
        "gpus_per_cell=two",
    )
    assert sweep.main(argv) == 2
    assert "gpus_per_cell: expected an integer, got 'two'" in capsys.readouterr().err
    assert not runs.exists()


def test_cell_job_requeues_itself_without_its_process(tmp_path: Path) -> None:
    job = slurm.CellJob(["fit"], str(tmp_path / "run"), "cell", {"python": sys.executable})
    job._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    delayed = job.checkpoint()
    assert job._proc.poll() is not None  # the fit was told to stop (and had time to save)
    again = delayed.function
    assert isinstance(again, slurm.CellJob) and again._proc is None and again.run_dir == job.run_dir
    import pickle

    assert pickle.loads(pickle.dumps(job)).fit_args == ["fit"]


def test_cause_line_is_the_last_error_line(tmp_path: Path) -> None:
    log = tmp_path / "sweep.log"
    log.write_text(
        "$ python -m fgbench fit\nEpoch 0\nTraceback (most recent call last):\n  File x\n"
        "RuntimeError: No supported gpu backend found!\n\n"
    )
    assert slurm.cause_line(log) == "RuntimeError: No supported gpu backend found!"
    log.write_text("Epoch 0\nstill going\n")
    assert slurm.cause_line(log) == "still going"
    assert slurm.cause_line(tmp_path / "absent.log") == "no log"


# -- --status and --cancel -------------------------------------------------------------------------------


def planned_cells(configs: Path, runs: Path, seeds: str) -> list[sweep.Planned]:
    ns = sweep.parser().parse_args(sweep_args(configs, "tiny_dual", "rstpreid", seeds=seeds))
    return sweep.plan(sweep.build_grid(ns), runs, [])


def test_status_shows_done_running_pending_and_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = write_configs(tmp_path)
    runs = tmp_path / "runs"
    cells = planned_cells(configs, runs, "0,1,2,3,4")
    done, running, failed, queued, _ = (c.run_dir for c in cells)
    done.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    running.mkdir(parents=True)
    (running / sweep.RUNNING_FILE).write_text(str(os.getpid()))
    failed.mkdir(parents=True)
    (failed / "sweep.log").write_text("Traceback\nValueError: max_len must be an int\n")
    sweep.record_failure(runs, {"run_dir": str(failed), "log": str(failed / "sweep.log"), "reason": "exit 1"})
    slurm.record_jobs(runs, [{"run_dir": str(queued), "cell": "x", "job_id": "77_3", "time": "t"}])
    monkeypatch.setattr(slurm, "queue_states", lambda ids: {"77_3": "PENDING"} if "77_3" in ids else {})
    states = [s.status for s in sweep_state.states(cells, runs)]
    assert states == ["done", "running", "failed", "pending", "pending"]
    rows = sweep_state.states(cells, runs)
    assert rows[2].detail == "ValueError: max_len must be an int" and rows[3].job_id == "77_3"
    assert (
        sweep.main(
            sweep_args(
                configs, "tiny_dual", "rstpreid", "--runs-root", str(runs), "--status", seeds="0,1,2,3,4"
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "5 cells: 1 done, 1 running, 2 pending, 1 failed" in out


def test_cancel_cancels_queued_jobs_and_stops_a_local_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = write_configs(tmp_path)
    runs = tmp_path / "runs"
    cells = planned_cells(configs, runs, "0,1")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.mkdir(parents=True)
        (runs / sweep.LOCK_FILE).write_text(str(holder.pid))
        cells[0].run_dir.mkdir(parents=True)
        (cells[0].run_dir / sweep.RUNNING_FILE).write_text(str(holder.pid))
        slurm.record_jobs(
            runs, [{"run_dir": str(cells[1].run_dir), "cell": "x", "job_id": "9_1", "time": "t"}]
        )
        monkeypatch.setattr(slurm, "queue_states", lambda ids: {"9_1": "RUNNING"})
        cancelled: list[list[str]] = []
        monkeypatch.setattr(slurm, "cancel", lambda ids: cancelled.append(list(ids)))
        assert sweep_state.cancel(cells, runs) == 0
        assert cancelled == [["9_1"]]
        assert holder.wait(timeout=10) == -signal.SIGTERM
    finally:
        holder.kill()


# -- a fit told to stop saves where it is ----------------------------------------------------------------


class SignalAtStep(TinyDual):
    """TinyDual that sends itself SIGTERM after its third training step (as SLURM does on a requeue)."""

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().training_step(batch, batch_idx)


def test_fit_saves_last_ckpt_on_sigterm_and_exits_143(tmp_path: Path) -> None:
    configs = write_configs(tmp_path)
    (configs / "method" / "signal.yaml").write_text("model:\n  class_path: test_slurm.SignalAtStep\n")
    cell = planned_cells(configs, tmp_path / "runs", "0")[0]
    fit = [
        a if a != str(configs / "method" / "tiny_dual.yaml") else str(configs / "method" / "signal.yaml")
        for a in cell.args
    ] + ["--trainer.max_epochs", "3"]
    with pytest.raises(SystemExit) as stop:
        fgbench_main(fit)
    assert stop.value.code == EXIT_PREEMPTED
    run_dir = next((tmp_path / "runs").glob("*/*/*/seed0-*"))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3  # saved at the end of the batch that saw the signal
    assert not (run_dir / "result.json").exists()  # no test of a half-trained model


# -- a real SLURM ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("a local SLURM needs root and apt-get (scripts/slurm-local.sh)")
    out = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    yield
    # the daemons are left running for the next test session (stop: scripts/slurm-local.sh stop)


# CPU cells on the local test cluster: one task, one core, a 10-minute limit
ON_SLURM = [
    "--launcher",
    "slurm",
    "--slurm",
    "gpus_per_cell=0",
    "--slurm",
    "cpus_per_task=1",
    "--slurm",
    "time=10",
]

SLOW_METHOD = """model:
  class_path: test_slurm.SlowDual
"""


class SlowDual(TinyDual):
    """TinyDual whose steps take a while, so a running cell can be requeued mid-training."""

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        time.sleep(0.3)
        return super().training_step(batch, batch_idx)


def job_env() -> dict[str, str]:
    """The environment the SLURM jobs inherit: this checkout's packages and the tests' methods first."""
    env = child_env()
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), env["PYTHONPATH"]])}


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
def test_slurm_sweep_equals_local(cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = write_configs(tmp_path)
    monkeypatch.setenv("PYTHONPATH", job_env()["PYTHONPATH"])
    monkeypatch.chdir(tmp_path)
    common = ["--no-leaderboard", "--extra", "--trainer.max_epochs 2"]
    slurm_args = ON_SLURM
    on_slurm = sweep_args(configs, "tiny_dual", "rstpreid", "--runs-root", "slurm_runs", *common, *slurm_args,
                          seeds="0,1")  # fmt: skip
    assert sweep.main(on_slurm) == 0
    assert (
        sweep.main(
            sweep_args(configs, "tiny_dual", "rstpreid", "--runs-root", "local_runs", *common, seeds="0,1")
        )
        == 0
    )
    for seed in (0, 1):
        (s_dir,) = (tmp_path / "slurm_runs").glob(f"*/*/*/seed{seed}-*")
        (l_dir,) = (tmp_path / "local_runs").glob(f"*/*/*/seed{seed}-*")
        assert s_dir.name == l_dir.name  # the same cell, the same hash
        assert result(s_dir)["metrics"] == result(l_dir)["metrics"]
        launcher = result(s_dir)["launcher"]
        assert launcher["launcher"] == "slurm" and launcher["job_id"] and launcher["cpus_per_task"] == 1
    jobs = slurm.read_jobs(tmp_path / "slurm_runs")
    assert len({j["job_id"].split("_")[0] for j in jobs.values()}) == 1  # one array for the sweep
    # a second run of the same sweep submits nothing
    assert sweep.main(on_slurm) == 0
    assert slurm.read_jobs(tmp_path / "slurm_runs") == jobs


def wait_for(predicate, seconds: float, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.5)


@pytest.mark.slow
def test_requeued_cell_resumes_from_its_checkpoint(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = write_configs(tmp_path)
    (configs / "method" / "slow.yaml").write_text(SLOW_METHOD)
    monkeypatch.setenv("PYTHONPATH", job_env()["PYTHONPATH"])
    monkeypatch.chdir(tmp_path)
    extra = ["--no-leaderboard", "--extra", "--trainer.max_epochs 4"]
    argv = sweep_args(
        configs,
        "slow",
        "rstpreid",
        "--runs-root",
        "runs",
        *extra,
        *ON_SLURM,
    )
    sweeper = subprocess.Popen(
        [sys.executable, "-m", "experiments.sweep", *argv],
        cwd=tmp_path,
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        runs = tmp_path / "runs"
        wait_for(lambda: bool(slurm.read_jobs(runs)), 120, "the submission")
        (entry,) = slurm.read_jobs(runs).values()
        metrics = Path(entry["run_dir"]) / "metrics.csv"
        if not metrics.is_absolute():
            metrics = tmp_path / metrics

        def trained_a_while() -> bool:
            return metrics.is_file() and len(metrics.read_text().splitlines()) > 4

        wait_for(trained_a_while, 180, "training steps")
        status = subprocess.run(
            [sys.executable, "-m", "experiments.sweep", *argv, "--status"],
            cwd=tmp_path,
            env=job_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "1 cells: 1 running" in status.stdout, status.stdout + status.stderr
        assert entry["job_id"] in status.stdout
        subprocess.run(["scontrol", "requeue", entry["job_id"]], check=True, timeout=60)
        out, _ = sweeper.communicate(timeout=600)
    finally:
        sweeper.kill()
    assert sweeper.returncode == 0, out[-3000:]
    run_dir = metrics.parent
    record = result(run_dir)
    assert record["launcher"]["restarts"] >= 1
    log = (run_dir / "sweep.log").read_text()
    assert log.count("# segment ") >= 2 and "--ckpt_path" in log
    resumed = pd.read_csv(metrics)
    # the same cell run locally without interruption gives the same numbers
    monkeypatch.chdir(tmp_path)
    local = sweep_args(configs, "slow", "rstpreid", "--runs-root", "local", *extra)
    assert sweep.main(local) == 0
    (l_dir,) = (tmp_path / "local").glob("*/*/*/seed0-*")
    assert result(l_dir)["metrics"] == record["metrics"]
    assert result(l_dir)["global_step"] == record["global_step"]
    # metrics.csv: every row of the uninterrupted run, none twice (the rows after the checkpoint were dropped
    # on resume and logged again)
    unbroken = pd.read_csv(l_dir / "metrics.csv")
    assert list(resumed.columns) == list(unbroken.columns)
    assert resumed["step"].tolist() == unbroken["step"].tolist()
    assert len(record["wall_segments"]) >= 2


def test_reproduce_passes_the_launcher_to_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import reproduce

    from fixtures.person import write_rstpreid

    write_rstpreid(tmp_path / "data", n_train=8, n_val=3, n_test=3)
    argv = [
        "rstpreid",
        "--data-root",
        str(tmp_path / "data"),
        "--runs-root",
        str(tmp_path / "runs"),
        "--launcher",
        "slurm",
        "--slurm",
        "nodes=zero",
    ]
    assert reproduce.main(argv) == 2
    assert "nodes: expected an integer, got 'zero'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
