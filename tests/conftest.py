"""Fixtures the method tests share: a data folder per module, the tiny synthetic datamodules (one per task
family), tiny random CLIP and BERT folders, local ResNet-18 weights and a run root. The reusable assertions
live in tests/method_checks.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from method_checks import save_tiny_bert, save_tiny_clip, tiny_datamodule


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the tiny synthetic datasets of the whole session (each is named by its sizes)."""
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder of one test module (synthetic datasets, format fixtures)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_dm(synth_root: Path) -> Callable[..., Any]:
    """`tiny_dm("synth-cir", batch_size=8)`: a registered synthetic DataModule, small, set up for fit."""
    return lambda name, **kw: tiny_datamodule(synth_root, name, **kw)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP checkpoint folder (model and tokenizer), as a hub download looks."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A run root for CLI runs of one test."""
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 6-layer BERT folder (model and word-piece tokenizer), as a hub download looks."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A random timm ResNet-18 and its state dict saved as a local weights file (path, model)."""
    import timm
    import torch

    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(src.state_dict(), path)
    return path, src
