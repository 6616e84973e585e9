"""2-process CPU DDP (gloo): fit + test works, and testing one checkpoint on 2 processes gives exactly the
metrics of 1 process (DistributedSampler padding is de-duplicated; query blocks are split across ranks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from method_checks import rstpreid_args, subprocess_env

from fixtures.person import write_rstpreid

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: str, data: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess:
    opts = ["--data.batch_size", "8", "--data.eval_batch_size", "7", *extra]
    args = [
        sys.executable,
        "-m",
        "fgbench",
        cmd,
        "--seed_everything",
        "1",
        *rstpreid_args(data, runs, *opts, epochs=2),
    ]
    return subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_ddp_fit_and_test_equal_single_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_rstpreid(data, n_train=8, n_val=2, n_test=3)  # test: 15 images, 30 captions: odd per-rank splits
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    fit = _run("fit", data, tmp_path / "fit", *ddp)
    assert fit.returncode == 0, fit.stderr[-3000:]
    (ckpt,) = (tmp_path / "fit").rglob("last.ckpt")
    (fit_result,) = (tmp_path / "fit").rglob("result.json")
    assert json.loads(fit_result.read_text())["world_size"] == 2
    one = _run("test", data, tmp_path / "one", "--ckpt_path", str(ckpt))
    two = _run("test", data, tmp_path / "two", "--ckpt_path", str(ckpt), *ddp)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    (r1,) = (tmp_path / "one").rglob("result.json")
    (r2,) = (tmp_path / "two").rglob("result.json")
    a, b = json.loads(r1.read_text()), json.loads(r2.read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["metrics"] == b["metrics"]
    assert a["details"]["n_query"] == b["details"]["n_query"] == 30
