"""Speed options (src/fgbench/speed.py): channels_last and torch.compile change the model's execution, not
its results, and result.json records what was applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fgbench.cli import main
from fgbench.speed import SpeedOptions, wants_channels_last

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs"
SCENES = '{"train_images": 6, "val_images": 3, "test_images": 3}'


def test_auto_channels_last_only_on_cuda_with_a_convolution() -> None:
    conv, linear = nn.Sequential(nn.Conv2d(3, 4, 3)), nn.Linear(3, 4)
    assert not wants_channels_last("auto", conv, torch.device("cpu"))
    assert wants_channels_last("auto", conv, torch.device("cuda"))
    assert not wants_channels_last("auto", linear, torch.device("cuda"))
    assert wants_channels_last("on", linear, torch.device("cpu"))
    with pytest.raises(ValueError, match="run.channels_last='yes': expected one of auto, on, off"):
        wants_channels_last("yes", conv, torch.device("cpu"))
    with pytest.raises(ValueError, match="run.compile='fast'"):
        SpeedOptions(compile="fast")


def fit(tmp_path: Path, root: Path, *extra: str) -> dict:
    args = ["fit", "--config", str(CONFIG / "data" / "synth-scenes.yaml"),
            "--config", str(CONFIG / "method" / "vsepp.yaml"),
            "--config", str(CONFIG / "profile" / "tiny.yaml"),
            "--data.root", str(root), "--data.sizes", SCENES, "--data.batch_size", "4",
            "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--run.root", str(tmp_path), *extra]  # fmt: skip
    assert main(args) == 0
    (path,) = tmp_path.glob("synth-scenes/vsepp/tiny/seed*/result.json")
    return json.loads(path.read_text())


def test_compiled_channels_last_run_gives_the_plain_run_metrics(tmp_path: Path) -> None:
    root = tmp_path / "data"
    plain = fit(tmp_path / "plain", root)
    fast = fit(tmp_path / "fast", root, "--run.channels_last", "on", "--run.compile", "eager")
    assert plain["speed_options"] == {"channels_last": False, "compile": "off", "compiled_modules": []}
    assert fast["speed_options"]["channels_last"] is True
    assert "image_encoder" in fast["speed_options"]["compiled_modules"]  # the TinyCNN tower
    assert fast["metrics"] == pytest.approx(plain["metrics"], abs=1e-6)
    assert fast["run_dir"].replace("fast", "plain") == plain["run_dir"]  # speed options are not in the hash
