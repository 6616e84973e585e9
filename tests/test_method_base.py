"""RetrievalMethod + the run command, end to end on an RSTPReid-format fixture with a minimal method.

The method here is deliberately tiny (a conv image encoder and a hashed bag-of-words text encoder) so the
test exercises the base class: training-step logging, the shared evaluation loop through the evaluator,
the hash-named run directory and result.json.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from method_checks import cpu_trainer, rstpreid_args
from torch import Tensor, nn

from datamodules.person import RSTPReidDataModule
from fgbench.cli import main
from fgbench.data.batches import PairBatch, TextBatch, VisualBatch
from fgbench.data.processor import BasicProcessor
from fgbench.evaluation import EvalSpec, evaluate
from fgbench.features import Features
from fgbench.method import RetrievalMethod

from fixtures.person import write_rstpreid

VOCAB = 257


class HashProcessor(BasicProcessor):
    """Words hashed into VOCAB buckets (0 = padding), fixed length 12."""

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = torch.zeros(len(texts), 12, dtype=torch.long)
        for i, t in enumerate(texts):
            words = [1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in t.lower().split()][:12]
            ids[i, : len(words)] = torch.tensor(words)
        return {"input_ids": ids, "attention_mask": ids > 0}


class TinyDual(RetrievalMethod):
    name = "tiny_dual"
    provenance = "test-only method"
    tasks = frozenset({"text-image"})

    def __init__(self, dim: int = 16, **kw) -> None:  # noqa: ANN003
        super().__init__(**kw)
        self.save_hyperparameters()
        self.img = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, dim)
        )
        self.txt = nn.EmbeddingBag(VOCAB, dim, mode="mean", padding_idx=0)
        self.processor = HashProcessor(image_size=(16, 8))

    def _img(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.img(pixels), dim=-1)

    def _txt(self, ids: Tensor) -> Tensor:
        return F.normalize(self.txt(ids), dim=-1)

    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        s = self._txt(batch.text.input_ids) @ self._img(batch.visual.pixels).T / 0.1
        y = torch.arange(s.shape[0])
        return {"itc": (F.cross_entropy(s, y) + F.cross_entropy(s.T, y)) / 2}

    def encode_queries(self, batch: TextBatch) -> Features:
        return Features(index=batch.index, glob=self._txt(batch.text.input_ids))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        return Features(index=batch.index, glob=self._img(batch.visual.pixels))


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    write_rstpreid(tmp_path / "data", n_train=8, n_val=3, n_test=3)
    return tmp_path / "data"


def test_fit_and_test_evaluates_through_the_evaluator(data_root: Path, tmp_path: Path) -> None:
    L.seed_everything(0)
    dm = RSTPReidDataModule(root=str(data_root), batch_size=8, eval_batch_size=4)
    model = TinyDual()
    trainer = cpu_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=2)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    got = model.last_result["test"].metrics
    assert set(got) == {"R1", "R5", "R10", "mAP", "mINP"}
    # the loop's numbers equal the evaluator on features encoded by hand
    model.eval()
    with torch.no_grad():
        q_loader, g_loader = dm.test_dataloader()
        q = Features.cat([model.encode_queries(b) for b in q_loader])
        g = Features.cat([model.encode_gallery(b) for b in g_loader])
    spec: EvalSpec = dm.evaluation_set("test").spec
    assert evaluate(q.glob @ g.glob.T, spec).metrics == pytest.approx(got)


def test_run_command_writes_a_hash_named_run(data_root: Path, tmp_path: Path) -> None:
    opts = ("--data.batch_size", "8", "--model.dim", "8")
    args = ["fit", "--seed_everything", "3", *rstpreid_args(data_root, tmp_path / "runs", *opts)]
    assert main(args) == 0
    runs = list((tmp_path / "runs" / "rstpreid" / "tiny_dual" / "tiny").glob("seed3-*"))
    assert len(runs) == 1 and len(runs[0].name) == len("seed3-") + 12
    run = runs[0]
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rec = json.loads((run / "result.json").read_text())
    assert rec["method"] == "tiny_dual" and rec["dataset"] == "rstpreid" and rec["seed"] == 3
    assert rec["details"]["protocol"] == "person_t2i" and set(rec["metrics"]) >= {"R1", "mAP", "mINP"}
    assert {"git_commit", "git_dirty", "versions", "device", "precision", "wall_time_s"} <= set(rec)
    # the same config lands in the same cell; a different one in another
    assert main(args) == 0
    assert list((tmp_path / "runs" / "rstpreid" / "tiny_dual" / "tiny").glob("seed3-*")) == runs
    assert main([*args, "--model.dim", "4"]) == 0
    assert len(list((tmp_path / "runs" / "rstpreid" / "tiny_dual" / "tiny").glob("seed3-*"))) == 2


class FrozenDual(TinyDual):
    """An evaluation-only method (like zero-shot CLIP): no training step."""

    name = "frozen_dual"
    trains = False


def test_fit_of_an_evaluation_only_method_trains_nothing_and_tests(data_root: Path, tmp_path: Path) -> None:
    args = [
        "fit",
        *rstpreid_args(data_root, tmp_path / "runs", model="test_method_base.FrozenDual", epochs=3),
    ]
    assert main(args) == 0
    (result,) = (tmp_path / "runs" / "rstpreid" / "frozen_dual" / "tiny").glob("seed0-*/result.json")
    rec = json.loads(result.read_text())
    assert rec["global_step"] == 0 and set(rec["metrics"]) >= {"R1", "mAP"}


class Clipped(TinyDual):
    @property
    def grad_clip_norm(self) -> float:
        return 2.0


@pytest.mark.parametrize(
    ("model", "trainer_val", "expected"),
    [(TinyDual, None, None), (TinyDual, 0.5, (0.5, "norm")), (Clipped, None, (2.0, "norm")),
     (Clipped, 0.5, (0.5, "norm"))],
)  # fmt: skip
def test_gradient_clipping_uses_the_method_recipe_unless_the_trainer_sets_one(
    model: type,
    trainer_val: float | None,
    expected: tuple[float, str] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[float, str]] = []
    m = model()
    monkeypatch.setattr(m, "clip_gradients", lambda opt, val, algo: calls.append((val, algo)))
    m.configure_gradient_clipping(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), trainer_val)
    assert calls == ([expected] if expected else [])
