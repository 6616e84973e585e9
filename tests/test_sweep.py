"""experiments.sweep: grid expansion and compatibility errors, --dry-run, resume (finished cells skipped, with
the run directory resolved exactly as `fit` names it), failure recording, the per-root lock, devices, and
(slow) a sweep killed mid-cell and restarted.

The cells run `test_method_base.TinyDual` on an RSTPReid-format fixture through a config folder written
per test, so nothing here depends on which methods are registered yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_method_base import TinyDual

from experiments import sweep
from fgbench.cells import resolve_run
from fgbench.cli import main as fgbench_main
from fgbench.registry import METHODS

from fixtures.person import write_rstpreid

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


class Exploding(TinyDual):
    """A method whose training step raises: its cell must fail without stopping the others."""

    name = "exploding"

    def losses(self, batch: object) -> dict[str, torch.Tensor]:
        raise RuntimeError("boom: this method always fails")


class ComposedOnly(TinyDual):
    """A method that declares only the composed task (incompatible with RSTPReid)."""

    name = "composed_only"
    tasks = frozenset({"composed"})


PROFILE = """trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_epochs: 1
  num_sanity_val_steps: 0
  log_every_n_steps: 1
model:
  init_args:
    profile: tiny
data:
  init_args:
    batch_size: 8
    eval_batch_size: 8
    num_workers: 0
"""


def write_configs(tmp: Path) -> Path:
    """configs/{data,method,profile}/ for the fixture dataset and the test methods."""
    configs = tmp / "configs"
    data_root = tmp / "data"
    write_rstpreid(data_root, n_train=8, n_val=3, n_test=3)
    files = {
        "data/rstpreid.yaml": "data:\n  class_path: datamodules.person.RSTPReidDataModule\n"
        f"  init_args:\n    root: {data_root}\n",
        "data/cirr.yaml": "data:\n  class_path: datamodules.cirr.CIRRDataModule\n",
        "method/tiny_dual.yaml": "model:\n  class_path: test_method_base.TinyDual\n"
        "  init_args:\n    dim: 8\n",
        "method/exploding.yaml": "model:\n  class_path: test_sweep.Exploding\n",
        "method/composed_only.yaml": "model:\n  class_path: test_sweep.ComposedOnly\n",
        "profile/test.yaml": PROFILE,
    }
    for name, text in files.items():
        (configs / name).parent.mkdir(parents=True, exist_ok=True)
        (configs / name).write_text(text)
    return configs


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    return write_configs(tmp_path)


def args(configs: Path, methods: str, datasets: str, *more: str, seeds: str = "0") -> list[str]:
    return ["--methods", methods, "--datasets", datasets, "--seeds", seeds, "--profile", "test",
            "--configs", str(configs), *more]  # fmt: skip


def grid(configs: Path, methods: str, datasets: str, seeds: str = "0") -> list[tuple[str, str, int]]:
    cells = sweep.build_grid(sweep.parser().parse_args(args(configs, methods, datasets, seeds=seeds)))
    return [(c.dataset.name, c.method.name, c.seed) for c in cells]


# -- the grid --------------------------------------------------------------------------------------------


def test_grid_pairs_each_method_with_the_datasets_of_its_tasks(configs: Path) -> None:
    got = grid(configs, "tiny_dual,composed_only", "rstpreid,cirr", seeds="0,1")
    assert got == [
        ("rstpreid", "tiny_dual", 0),
        ("rstpreid", "tiny_dual", 1),
        ("cirr", "composed_only", 0),
        ("cirr", "composed_only", 1),
    ]


def test_skip_leaves_out_the_matching_cells_and_refuses_a_pattern_that_matches_none(configs: Path) -> None:
    def cells(*more: str) -> list[tuple[str, str]]:
        ns = sweep.parser().parse_args(args(configs, "tiny_dual,composed_only", "rstpreid,cirr", *more))
        return [(c.method.name, c.dataset.name) for c in sweep.build_grid(ns)]

    assert cells() == [("tiny_dual", "rstpreid"), ("composed_only", "cirr")]
    assert cells("--skip", "composed_only@cirr") == [("tiny_dual", "rstpreid")]
    assert cells("--skip", "*@rstpreid", "--skip", "composed_*@c*") == []
    with pytest.raises(sweep.GridError, match="matches no cell of this grid"):
        cells("--skip", "tiny_dual@cirr")  # not a cell (tasks differ): a typo-like skip is refused
    with pytest.raises(sweep.GridError, match="expected METHOD@DATASET"):
        cells("--skip", "tiny_dual")


def test_named_incompatible_pair_is_an_error_that_says_why(
    configs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(sweep.GridError, match="composed_only supports composed; rstpreid is text-image"):
        grid(configs, "composed_only", "rstpreid")
    with pytest.raises(sweep.GridError, match="cirr is composed; tiny_dual supports text-image"):
        grid(configs, "tiny_dual", "rstpreid,cirr")
    assert sweep.main(args(configs, "composed_only", "rstpreid")) == 2
    assert "composed_only supports composed; rstpreid is text-image" in capsys.readouterr().err


def test_all_takes_every_registered_name_and_drops_incompatible_pairs(
    configs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `all` datasets = every registered datamodule with a config here (rstpreid, cirr): cirr is dropped
    assert grid(configs, "tiny_dual", "all") == [("rstpreid", "tiny_dual", 0)]
    assert grid(configs, "tiny_dual", "*r*") == [("rstpreid", "tiny_dual", 0)]  # a glob is like `all`
    monkeypatch.setitem(METHODS._entries, "tiny_dual", TinyDual)
    assert ("rstpreid", "tiny_dual", 0) in grid(configs, "all", "rstpreid")


def test_paper_cells_add_the_experiment_config_of_their_pair(configs: Path) -> None:
    (configs / "profile" / "paper.yaml").write_text(PROFILE)
    (configs / "experiment").mkdir()
    recipe = configs / "experiment" / "tiny_dual_rstpreid.yaml"
    recipe.write_text("data:\n  init_args:\n    batch_size: 4\n")
    for profile, wanted in (("paper", True), ("test", False)):
        ns = sweep.parser().parse_args([*args(configs, "tiny_dual", "rstpreid")[:-4], "--profile", profile,
                                        "--configs", str(configs)])  # fmt: skip
        (cell,) = sweep.build_grid(ns)
        fit = cell.fit_args(configs, [])
        assert (str(recipe) in fit) is wanted, (profile, fit)
        if wanted:  # after the profile, so the pair's recipe wins over the profile's defaults
            assert fit.index(str(recipe)) > fit.index(str(configs / "profile" / "paper.yaml"))
    assert sweep.experiment_config(configs, "mmref", "cuhk-pedes").name == "mmref_cuhk_pedes.yaml"


def test_unknown_names_list_what_exists(configs: Path) -> None:
    with pytest.raises(sweep.GridError, match=r"unknown method 'nope'.*composed_only, exploding, tiny_dual"):
        grid(configs, "nope", "rstpreid")
    with pytest.raises(sweep.GridError, match="unknown profile 'huge'"):
        sweep.build_grid(
            sweep.parser().parse_args([*args(configs, "tiny_dual", "rstpreid"), "--profile", "huge"])
        )


def test_jobs_need_as_many_devices(configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.main(args(configs, "tiny_dual", "rstpreid", "--jobs", "3", "--devices", "0,1")) == 2
    assert "--jobs 3 needs as many --devices" in capsys.readouterr().err


# -- dry run and resume ----------------------------------------------------------------------------------


def test_dry_run_lists_cells_and_commands_and_writes_nothing(
    configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert (
        sweep.main(args(configs, "tiny_dual", "rstpreid", "--runs-root", str(runs), "--dry-run", seeds="0,1"))
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "[pending] rstpreid/tiny_dual/test seed0" in out and "[pending] rstpreid/tiny_dual/test seed1" in out
    )
    assert f"{runs}/rstpreid/tiny_dual/tiny/seed1-" in out
    assert "python -m fgbench fit --config" in out and "--seed_everything 1" in out
    assert "2 cells: 0 finished, 2 to run" in out
    assert not runs.exists()


def test_finished_cell_is_skipped_at_the_directory_fit_wrote(
    configs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    (cell,) = sweep.build_grid(sweep.parser().parse_args(args(configs, "tiny_dual", "rstpreid")))
    fit_args = cell.fit_args(runs, ["--trainer.max_epochs", "1"])
    assert fgbench_main(fit_args) == 0  # the real run, in process
    (written,) = runs.glob("rstpreid/tiny_dual/tiny/seed0-*/result.json")
    assert resolve_run(fit_args).directory == written.parent  # the sweep's resolver agrees with fit

    def must_not_run(*a: object, **k: object) -> int:
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(sweep.Runner, "_spawn", must_not_run)
    code = sweep.main(
        args(configs, "tiny_dual", "rstpreid", "--runs-root", str(runs), "--out", str(tmp_path / "results"),
             "--extra", "--trainer.max_epochs 1")
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "1 cells: 0 done, 1 skipped, 0 failed" in out
    assert (tmp_path / "results" / "leaderboards" / "rstpreid.md").is_file()
    # another extra option is another config: that cell is not finished
    other = sweep.plan([cell], runs, ["--trainer.max_epochs", "2"])
    assert not other[0].finished and other[0].run_dir != written.parent


# -- running cells ---------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Children import the test methods from tests/ (pytest puts it on sys.path only in process)."""
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def test_failed_cell_is_recorded_and_the_others_go_on(
    configs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PYTHONPATH", child_env()["PYTHONPATH"])
    runs, results = tmp_path / "runs", tmp_path / "results"
    code = sweep.main(
        args(configs, "exploding,tiny_dual", "rstpreid", "--runs-root", str(runs), "--out", str(results),
             "--jobs", "2")
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "2 cells: 1 done, 0 skipped, 1 failed" in out
    (failure,) = sweep.read_failures(runs)
    assert failure["method"] == "exploding" and failure["seed"] == 0 and failure["returncode"] != 0
    assert "boom: this method always fails" in failure["stderr_tail"]
    assert Path(failure["log"]).is_file() and "--seed_everything 0" in failure["command"]
    assert len(list(runs.glob("rstpreid/tiny_dual/tiny/seed0-*/result.json"))) == 1
    board = pd.read_csv(results / "leaderboards" / "rstpreid.csv")
    assert list(board["method"]) == ["tiny_dual"]
    assert not list(runs.glob("**/.*.tmp"))


def test_failures_file_appends_whole_lines(tmp_path: Path) -> None:
    for i in range(3):
        sweep.record_failure(tmp_path, {"cell": f"c{i}", "stderr_tail": "line one\nline two"})
    assert [f["cell"] for f in sweep.read_failures(tmp_path)] == ["c0", "c1", "c2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [sweep.FAILURES_FILE]


def test_each_running_cell_gets_its_own_device(configs: Path, tmp_path: Path) -> None:
    fake = tmp_path / "fake_python"
    seen = tmp_path / "seen"
    fake.write_text(f'#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES" >> {seen}\nsleep 0.3\nexit 0\n')
    fake.chmod(0o755)
    cells = sweep.build_grid(
        sweep.parser().parse_args(args(configs, "tiny_dual", "rstpreid", seeds="0,1,2,3"))
    )
    planned = sweep.plan(cells, tmp_path / "runs", [])
    runner = sweep.Runner(tmp_path / "runs", jobs=2, devices=["5", "7"], python=str(fake))
    outcomes = sweep.run_all(planned, runner)
    # the fake child writes no result.json: every cell fails, each having had device 5 or 7
    assert [o.status for o in outcomes] == ["failed"] * 4
    assert sorted(seen.read_text().split()) == ["5", "5", "7", "7"]
    assert all(f["reason"] == "exit 0 but no result.json" for f in sweep.read_failures(tmp_path / "runs"))


def test_second_sweep_on_the_same_root_exits_at_once(
    configs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    with sweep.sweep_lock(runs):
        with pytest.raises(sweep.SweepLocked, match=f"pid {os.getpid()}"):
            with sweep.sweep_lock(runs):
                pass
        start = time.monotonic()
        code = sweep.main(args(configs, "tiny_dual", "rstpreid", "--runs-root", str(runs)))
        assert code == sweep.EXIT_LOCKED and time.monotonic() - start < 30
        assert "another sweep" in capsys.readouterr().err
    with sweep.sweep_lock(runs):  # released on exit
        pass


# -- killed and restarted (slow) ------------------------------------------------------------------------


def _processes_of(sweep_pid: int) -> list[int]:
    """Live processes started by the sweep with this pid (their environment names it)."""
    marker = f"{sweep.PARENT_ENV}={sweep_pid}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().split(") ", 1)[1][0]
                if state != "Z":
                    pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and the parent-death signal")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_sweep_resumes_where_it_stopped(tmp_path: Path, sig: signal.Signals) -> None:
    configs = write_configs(tmp_path)
    runs, results = tmp_path / "runs", tmp_path / "results"
    more = ("--runs-root", str(runs), "--out", str(results))
    cmd = [
        sys.executable,
        "-m",
        "experiments.sweep",
        *args(configs, "tiny_dual", "rstpreid", *more, seeds="0,1,2"),
    ]
    first = subprocess.Popen(
        cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    results_of = lambda: sorted(runs.glob("rstpreid/tiny_dual/tiny/seed*/result.json"))  # noqa: E731
    logs_of = lambda: sorted(runs.glob("rstpreid/tiny_dual/tiny/seed*/sweep.log"))  # noqa: E731
    _wait_for(lambda: len(results_of()) == 1 and len(logs_of()) == 2, 240, "cell 0 done and cell 1 started")
    finished = results_of()[0]
    finished_mtime = finished.stat().st_mtime
    first.send_signal(sig)
    out = first.communicate(timeout=60)[0].decode()
    assert first.returncode in (-sig, 130), out
    _wait_for(lambda: not _processes_of(first.pid), 30, "the running cell to die with its sweep")
    assert len(results_of()) == 1  # the interrupted cell did not finish

    second = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 cells: 2 done, 1 skipped, 0 failed" in second.stdout
    assert finished.stat().st_mtime == finished_mtime  # the finished cell was not rerun
    assert [p.parent.name.split("-")[0] for p in results_of()] == ["seed0", "seed1", "seed2"]
    runs_csv = pd.read_csv(results / "runs.csv")
    assert sorted(runs_csv[runs_csv["metric"] == "R1"]["seed"]) == [0, 1, 2]
    board = pd.read_csv(results / "leaderboards" / "rstpreid.csv")
    assert len(board) == 1 and board["n"].item() == 3
