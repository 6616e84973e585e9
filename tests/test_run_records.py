"""Run records that never lose or misfile a result: real tiny fits on an RSTPReid-format fixture.

- a killed and resumed fit keeps every metrics.csv row and sums its wall-time segments;
- `test --ckpt_path RUN/checkpoints/last.ckpt` files its result with RUN (result.json confirmed, variants
  as result.<variant>.json), and the leaderboard keeps the trained result;
- the run directory's hash ignores options left at their defaults; folders named the first way are found;
- a checkpoint under another method's or another training config is refused (exit 2, one message);
- result files get the user's umask.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_method_base import TinyDual

import experiments.leaderboard as lb
from fgbench.cells import resolve_run
from fgbench.cli import main
from fgbench.io import atomic_write_json

from fixtures.person import write_rstpreid

ROOT = Path(__file__).resolve().parents[1]


class OptDual(TinyDual):
    """TinyDual under its own class path, swapped below for a version with one more option."""

    def __init__(self, dim: int = 16, **kw) -> None:  # noqa: ANN003
        super().__init__(dim=dim, **kw)


class OptDualMore(TinyDual):
    def __init__(self, dim: int = 16, gamma: float = 0.5, **kw) -> None:  # noqa: ANN003
        super().__init__(dim=dim, **kw)


def _args(data: Path, runs: Path, *extra: str, model: str = "test_method_base.TinyDual") -> list[str]:
    return [
        "--data", "datamodules.person.RSTPReidDataModule",
        "--data.root", str(data),
        "--data.batch_size", "8",
        "--model", model,
        "--trainer.max_epochs", "2",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--run.root", str(runs),
        *extra,
    ]  # fmt: skip


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_rstpreid(tmp_path / "data", n_train=6, n_val=2, n_test=3)  # 60 training pairs: 7 batches of 8
    return tmp_path / "data"


def _run_dirs(runs: Path) -> list[Path]:
    return sorted(p.parent for p in runs.rglob("config.yaml"))


def test_killed_fit_resumes_with_its_whole_log_and_summed_wall_time(data: Path, tmp_path: Path) -> None:
    extra = ["--seed_everything", "7", "--run.ckpt_every_n_steps", "3"]
    whole = _args(data, tmp_path / "a", *extra, model="test_resume.DropDual")
    assert main(["fit", *whole]) == 0
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT / 'src'}:{ROOT}")
    env["FGBENCH_TEST_KILL_AT_STEP"] = "5"
    broken = _args(data, tmp_path / "b", *extra, model="test_resume.DropDual")
    cmd = [sys.executable, "-m", "fgbench", "fit", *broken]
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == 3, killed.stderr[-2000:]  # a hard kill at step 5; last.ckpt is from step 3
    (run,) = _run_dirs(tmp_path / "b")
    before = (run / "metrics.csv").read_text().splitlines()
    assert len(before) > 3  # rows up to the checkpoint reached the disk with it
    assert main(["fit", *broken, "--ckpt_path", "last"]) == 0
    (done,) = _run_dirs(tmp_path / "a")
    log = (run / "metrics.csv").read_text()
    # exact resume: the resumed log is the uninterrupted run's, row for row (no gap, no repeated step)
    # every row of the unbroken run, none twice: the same columns, steps and NaN pattern; values equal up to
    # float summation order (the killed segment ran in a subprocess, whose thread count may differ)
    got, want = pd.read_csv(io.StringIO(log)), pd.read_csv(done / "metrics.csv")
    assert list(got.columns) == list(want.columns)
    assert got[["epoch", "step"]].equals(want[["epoch", "step"]]) and got.isna().equals(want.isna())
    np.testing.assert_allclose(got.to_numpy(float), want.to_numpy(float), rtol=1e-5, equal_nan=True)
    rec = json.loads((run / "result.json").read_text())
    segments = rec["wall_segments"]
    assert [(s["from_step"], s["to_step"]) for s in segments] == [(0, 3), (3, 14)]
    assert rec["wall_time_s"] == pytest.approx(sum(s["seconds"] for s in segments))
    assert all(s["seconds"] > 0 for s in segments) and rec["global_step"] == 14


def test_a_test_of_a_run_files_with_it_and_the_leaderboard_keeps_the_trained_result(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    old = os.umask(0o022)
    try:
        assert main(["fit", *_args(data, runs)]) == 0
    finally:
        os.umask(old)
    (run,) = _run_dirs(runs)
    trained = json.loads((run / "result.json").read_text())
    assert stat.S_IMODE((run / "result.json").stat().st_mode) == 0o644  # the umask's, not mkstemp's 0600
    capsys.readouterr()
    ckpt = str(run / "checkpoints" / "last.ckpt")
    config = str(run / "config.yaml")
    assert main(["test", "--config", config, "--ckpt_path", ckpt]) == 0
    out = capsys.readouterr().out
    assert out.count("┃ metric") == 1 and "test/R1" not in out  # our table once, not Lightning's
    assert _run_dirs(runs) == [run]  # no second run folder
    confirmed = json.loads((run / "result.json").read_text())
    for key in ("epochs", "global_step", "wall_time_s", "wall_segments", "config_hash", "metrics"):
        assert confirmed[key] == trained[key], key
    assert confirmed["global_step"] == 14 and confirmed["origin"] == "fit"
    (retest,) = confirmed["tests"]
    assert retest["ckpt_path"] == ckpt and retest["changed_metrics"] == []
    # a named variant and a changed test-time switch: result files beside the run's, never over it
    assert main(["test", "--config", config, "--ckpt_path", ckpt, "--run.variant", "again"]) == 0
    assert main(["test", "--config", config, "--ckpt_path", ckpt, "--model.init_args.rerank_k", "3"]) == 0
    assert _run_dirs(runs) == [run]
    assert json.loads((run / "result.json").read_text())["tests"] == [retest]
    named = json.loads((run / "result.again.json").read_text())
    switched = json.loads((run / "result.rerank_k=3.json").read_text())
    assert (named["variant"], switched["variant"]) == ("again", "rerank_k=3")
    assert named["origin"] == switched["origin"] == "test"
    assert named["global_step"] == switched["global_step"] == 14
    assert switched["details"]["rerank_k"] == 3 and named["metrics"] == trained["metrics"]
    assert (run / "config.yaml").read_text() == Path(config).read_text()  # the training config is untouched
    # a test-only copy filed by an earlier version in a folder of its own, newer than the trained run
    stray = run.parent / "seed0-d1335d4ada7c"
    stray.mkdir()
    stray_rec = {**trained, "epochs": 0, "global_step": 0, "metrics": {"R1": 0.0}}
    for key in ("origin", "wall_segments"):  # fields that version did not write
        stray_rec.pop(key)
    atomic_write_json(stray / "result.json", stray_rec)
    report = lb.build(runs, tmp_path / "results", png=False)
    (board,) = report.boards["rstpreid"]
    rows = board.table.set_index("method")
    assert set(rows.index) == {"tiny_dual", "tiny_dual[again]", "tiny_dual[rerank_k=3]"}
    assert rows.loc["tiny_dual", "R1_mean"] == pytest.approx(trained["metrics"]["R1"])
    assert board.set_aside == 1  # the stray test-only copy, not the trained result


def test_an_option_added_with_its_default_keeps_the_hash(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["fit", *_args(data, tmp_path / "runs", model="test_run_records.OptDual")]
    before = resolve_run(args).directory
    monkeypatch.setattr(sys.modules[__name__], "OptDual", OptDualMore)  # the method gains `gamma=0.5`
    from fgbench.train_cli import FgbenchCLI

    base = FgbenchCLI.add_arguments_to_parser

    def more(self, parser) -> None:  # noqa: ANN001 - and the CLI a top-level option with a default
        base(self, parser)
        parser.add_argument("--new_option", type=int, default=3)

    monkeypatch.setattr(FgbenchCLI, "add_arguments_to_parser", more)
    assert resolve_run(args).directory == before
    assert resolve_run([*args, "--model.init_args.gamma", "0.25"]).directory != before  # a real change
    assert resolve_run([*args, "--new_option", "4"]).directory != before


def test_a_run_folder_named_by_the_first_scheme_is_still_found(data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [
        "fit",
        "--data", "datamodules.person.RSTPReidDataModule",
        "--data.root", str(data),
        "--data.batch_size", "8",
        "--model", "test_method_base.TinyDual",
        "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--run.root", str(runs),
    ]  # fmt: skip
    fresh = resolve_run(args).directory
    # what the code before the identity named this cell (the whole resolved config less a fixed list of keys,
    # computed with that code, commit 7b851eb, for this command line)
    old = runs / "rstpreid" / "tiny_dual" / "tiny" / "seed0-0b62357af42c"
    assert fresh != old
    old.mkdir(parents=True)
    assert resolve_run(args).directory == old
    assert main(args) == 0  # the fit lands in it, and its record names that folder's hash
    assert json.loads((old / "result.json").read_text())["config_hash"] == "0b62357af42c"
    assert not fresh.exists()


def test_a_checkpoint_under_another_config_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert main(["fit", *_args(data, runs, "--trainer.max_steps", "2")]) == 0
    (run,) = _run_dirs(runs)
    ckpt = str(run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    other = _args(data, runs, "--ckpt_path", ckpt, model="test_resume.DropDual")
    assert main(["test", *other]) == 2
    err = capsys.readouterr().err
    assert "test_method_base.TinyDual" in err and "test_resume.DropDual" in err and "Traceback" not in err
    assert main(["test", *_args(data, runs, "--ckpt_path", ckpt, "--model.init_args.dim", "8")]) == 2
    err = capsys.readouterr().err
    assert "model.init_args.dim: checkpoint 16, config 8" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("result")) == ["result.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_result_files_get_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
