"""Checkpoint and resume: a run killed mid-epoch resumes from its last checkpoint to the same final metrics
as an uninterrupted run with the same seed (the loader position and the RNG states are in the checkpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from method_checks import rstpreid_args, subprocess_env
from test_method_base import TinyDual
from torch import Tensor

from fgbench.data.samplers import ShuffleSampler

from fixtures.person import write_rstpreid

ROOT = Path(__file__).resolve().parents[1]


class DropDual(TinyDual):
    """TinyDual with dropout on the features (draws from the global RNG) and a kill switch for tests."""

    name = "drop_dual"

    def losses(self, batch) -> dict[str, Tensor]:  # noqa: ANN001
        kill = int(os.environ.get("FGBENCH_TEST_KILL_AT_STEP", "0"))
        if kill and self.global_step == kill:
            os._exit(3)  # a hard kill: no clean-up, no final checkpoint
        t = F.dropout(self._txt(batch.text.input_ids), 0.3, self.training)
        v = F.dropout(self._img(batch.visual.pixels), 0.3, self.training)
        s = t @ v.T / 0.1
        y = torch.arange(s.shape[0])
        return {"itc": (F.cross_entropy(s, y) + F.cross_entropy(s.T, y)) / 2}


def test_sampler_skips_exactly_what_was_done() -> None:
    full = ShuffleSampler(range(40), num_replicas=1, rank=0, seed=5, drop_last=True)
    full.set_epoch(2)
    order = list(full)
    resumed = ShuffleSampler(range(40), num_replicas=1, rank=0, seed=5, drop_last=True)
    resumed.set_epoch(2)
    resumed.start = 16
    assert list(resumed) == order[16:]
    assert list(resumed) == order  # the skip applies once


def _fit(data: Path, runs: Path, *extra: str, kill: int = 0) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("FGBENCH_TEST_KILL_AT_STEP", None)
    if kill:
        env["FGBENCH_TEST_KILL_AT_STEP"] = str(kill)
    opts = ["--data.batch_size", "8", "--run.ckpt_every_n_steps", "5", *extra]
    cmd = [sys.executable, "-m", "fgbench", "fit", "--seed_everything", "7",
           *rstpreid_args(data, runs, *opts, model="test_resume.DropDual", epochs=2)]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_mid_epoch_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_rstpreid(data, n_train=10, n_val=2, n_test=3)  # 100 training pairs: 12 batches of 8 per epoch
    whole = _fit(data, tmp_path / "a")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _fit(data, tmp_path / "b", kill=7)  # dies after step 7; last.ckpt is from step 5 (epoch 0)
    assert killed.returncode == 3
    assert not list((tmp_path / "b").rglob("result.json"))
    resumed = _fit(data, tmp_path / "b", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (ra,) = (tmp_path / "a").rglob("result.json")
    (rb,) = (tmp_path / "b").rglob("result.json")
    a, b = json.loads(ra.read_text()), json.loads(rb.read_text())
    assert a["global_step"] == b["global_step"] == 24
    assert a["metrics"] == b["metrics"]
    # the log continues across the kill, and the wall time is the sum of both segments
    assert (rb.parent / "metrics.csv").read_text() == (ra.parent / "metrics.csv").read_text()
    assert [(s["from_step"], s["to_step"]) for s in b["wall_segments"]] == [(0, 5), (5, 24)]
    assert b["wall_time_s"] == sum(s["seconds"] for s in b["wall_segments"])
