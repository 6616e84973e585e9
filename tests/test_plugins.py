"""Plugins found without the core naming them (docs/plugins.md): the `fgbench.plugins` entry points, the
FGBENCH_PLUGINS folders and modules, and a method added as one file plus one config that the sweep runs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fgbench import registry

REPO = Path(__file__).resolve().parent.parent

# One new method file: a tiny dual encoder (hashed bag of words, pooled pixels), registered by name.
METHOD_FILE = """
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from fgbench.data.processor import BasicProcessor
from fgbench.features import Features
from fgbench.method import RetrievalMethod
from fgbench.registry import register_method


class Hashed(BasicProcessor):
    def tokenize(self, texts):
        ids = torch.zeros(len(texts), 12, dtype=torch.long)
        for i, t in enumerate(texts):
            words = [1 + zlib.crc32(w.encode()) % 256 for w in t.lower().split()][:12]
            ids[i, : len(words)] = torch.tensor(words)
        return {"input_ids": ids, "attention_mask": ids > 0}


@register_method("plugin_bow")
class PluginBow(RetrievalMethod):
    tasks = frozenset({"text-image"})

    def __init__(self, dim: int = 8, **kw):
        super().__init__(**kw)
        self.save_hyperparameters()
        self.img = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, dim))
        self.txt = nn.EmbeddingBag(257, dim, mode="mean", padding_idx=0)
        self.processor = Hashed(image_size=(16, 8))

    def losses(self, batch):
        t, v = self.encode_queries(batch).glob, self.encode_gallery(batch).glob
        return {"itc": F.cross_entropy(t @ v.T / 0.1, torch.arange(len(t)))}

    def encode_queries(self, batch):
        return Features(index=batch.index, glob=F.normalize(self.txt(batch.text.input_ids), dim=-1))

    def encode_gallery(self, batch):
        return Features(index=batch.index, glob=F.normalize(self.img(batch.visual.pixels), dim=-1))
"""

METHOD_CONFIG = "model:\n  class_path: plugin_bow.PluginBow\n  init_args:\n    dim: 8\n"


@pytest.fixture
def fresh_registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registries that load the plugins again (and forget what this test registers)."""
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry.METHODS, "_entries", dict(registry.METHODS._entries))
    monkeypatch.setattr(registry.DATAMODULES, "_entries", dict(registry.DATAMODULES._entries))
    monkeypatch.setattr(sys, "path", list(sys.path))


def write_plugin(folder: Path) -> Path:
    """The plugin folder: one method file and its sweep config."""
    (folder / "configs" / "method").mkdir(parents=True)
    (folder / "plugin_bow.py").write_text(METHOD_FILE)
    (folder / "configs" / "method" / "plugin_bow.yaml").write_text(METHOD_CONFIG)
    return folder


def test_entry_points_are_imported(monkeypatch: pytest.MonkeyPatch, fresh_registries: None) -> None:
    seen: list[str] = []

    class Point:
        def __init__(self, value: str) -> None:
            self.value = value

        def load(self) -> None:
            seen.append(self.value)

    def fake(group: str) -> list[Point]:
        assert group == registry.ENTRY_POINT_GROUP
        return [Point("some_package.methods"), Point("other.datamodules")]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    registry.load_plugins()
    assert seen == ["some_package.methods", "other.datamodules"]
    registry.load_plugins()  # once
    assert len(seen) == 2


def test_a_checkout_whose_metadata_predates_the_group_reads_its_pyproject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    values = {ep.name: ep.value for ep in registry.entry_points()}
    assert values == {"datamodules": "datamodules", "methods": "methods", "ensemble": "fgbench.ensemble"}


def test_default_plugins_register_every_method_and_the_ensemble() -> None:
    assert {"teran", "vsepp", "clip_zs", "ensemble"} <= set(registry.METHODS.list())
    assert {"synth-person", "synth-scenes", "synth-cir"} <= set(registry.DATAMODULES.list())


def test_plugin_folder_and_module_entries_are_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_registries: None
) -> None:
    folder = write_plugin(tmp_path / "plugins")
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "named_plugin.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setenv(registry.PLUGINS_ENV, os.pathsep.join([str(folder), "named_plugin"]))
    cls = registry.METHODS.get("plugin_bow")
    assert cls.name == "plugin_bow" and registry.resolve("plugin_bow.PluginBow") is cls
    assert sys.modules["named_plugin"].LOADED
    assert registry.config_folders(Path("base"), "method") == [Path("base/method"), folder / "configs/method"]


def test_resolve_takes_names_and_class_paths_and_lists_the_registered_names() -> None:
    from methods.teran import TERAN

    assert registry.resolve("teran") is TERAN and registry.resolve("methods.teran.TERAN") is TERAN
    assert registry.resolve("synth-person", registry.DATAMODULES).name == "synth-person"
    with pytest.raises(KeyError, match=r"unknown method 'nope'; registered: .*teran"):
        registry.resolve("nope")
    unimportable = r"cannot import method class 'methods.nope.X'.*registered names: .*vsepp"
    with pytest.raises(KeyError, match=unimportable):
        registry.resolve("methods.nope.X")


def test_a_method_from_one_file_and_one_config_is_swept(tmp_path: Path, runs: Path) -> None:
    """Acceptance (issue 21): a method in a plugin folder is trained, tested and in the sweep's results."""
    folder = write_plugin(tmp_path / "plugins")
    results = tmp_path / "results"
    env = {**os.environ, registry.PLUGINS_ENV: str(folder), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "experiments.sweep", "--methods", "plugin_bow", "--datasets", "synth-person",
           "--seeds", "0", "--profile", "tiny", "--runs-root", str(runs), "--out", str(results),
           "--extra", "--trainer.max_epochs 1"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 cells: 1 done, 0 skipped, 0 failed" in done.stdout
    (result,) = runs.glob("synth-person/plugin_bow/tiny/seed0-*/result.json")
    record = json.loads(result.read_text())
    assert record["global_step"] > 0 and record["split"] == "test"  # trained, then tested
    assert {"R1", "mAP"} <= set(record["metrics"])
    board = pd.read_csv(results / "leaderboards" / "synth-person.csv")
    assert "plugin_bow" in set(board["method"])
