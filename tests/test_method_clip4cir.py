"""CLIP4Cir stage 2 (methods/clip4cir.py; docs/methods.md §10): the Combiner's mixing weight and output,
frozen CLIP, loading a stage-1 checkpoint, unit-norm eval queries and dropout in training (the shared checks
of docs/methods.md §0: test_contract.py), and runs through the CLI on synth-cir and a FashionIQ fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from method_checks import (
    assert_learns_synth_cir,
    attach,
    eval_batches,
    first_batch,
    synth_dm,
)
from test_method_tirg import cir_args, cli_run, fiq_args

from fgbench.data.module import RetrievalDataModule
from fgbench.features import Features
from fgbench.registry import METHODS
from methods.clip4cir import CLIP4Cir, Combiner


def built(dm: RetrievalDataModule, **kw: Any) -> CLIP4Cir:
    L.seed_everything(0)
    return attach(CLIP4Cir(**kw), dm)  # type: ignore[return-value]


def test_registered_with_its_tasks() -> None:
    assert METHODS.get("clip4cir") is CLIP4Cir
    assert CLIP4Cir.tasks == {"composed"} and "ABaldrati/CLIP4Cir" in CLIP4Cir.provenance


def test_lambda_in_open_unit_interval_and_output_without_w_o() -> None:
    torch.manual_seed(0)
    comb = Combiner(16, 32, 48).eval()
    v, t = 3 * torch.randn(64, 16), 3 * torch.randn(64, 16)
    lam = comb.dynamic_scalar(comb.project(v, t))
    assert lam.shape == (64, 1) and bool((lam > 0).all() and (lam < 1).all())
    assert lam.std() > 0  # λ depends on the input
    with torch.no_grad():
        comb.output.weight.zero_()
        comb.output.bias.zero_()
    torch.testing.assert_close(comb(v, t), F.normalize(lam * t + (1 - lam) * v, dim=-1))


def test_sizes_follow_the_clip_feature_dim(root: Path) -> None:
    model = built(synth_dm(root, "synth-cir"), projection_dim=None, hidden_dim=None)
    comb = model.combiner
    assert (comb.text_projection.in_features, comb.text_projection.out_features) == (64, 256)
    assert (comb.combiner.in_features, comb.combiner.out_features) == (512, 512)
    assert comb.output.out_features == 64 and comb.dynamic_scalar[0].out_features == 512


def test_clip_is_frozen_and_loss_is_ce_of_100_cosines(root: Path) -> None:
    dm = synth_dm(root, "synth-cir", batch_size=4)
    model = built(dm)
    model.train()
    assert not model.image_encoder.training and not model.text_encoder.training and model.combiner.training
    batch = first_batch(dm)
    loss = model.losses(batch)["classification"]
    loss.backward()
    towers = [*model.image_encoder.parameters(), *model.text_encoder.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in towers)
    assert all(p.grad is not None for p in model.combiner.parameters())
    model.eval()
    q = model.query_vectors(batch.reference, batch.text)
    g = F.normalize(model.image_encoder(batch.target).glob, dim=-1)
    expected = F.cross_entropy(100 * q @ g.T, torch.arange(len(q)))
    torch.testing.assert_close(model.losses(batch)["classification"], expected)


def test_eval_queries_are_unit_and_training_ones_drop_out(root: Path) -> None:  # shared checks: contract
    dm = synth_dm(root, "synth-cir")
    model = built(dm).eval()
    queries, _ = eval_batches(dm, 64)
    with torch.no_grad():
        q = Features.cat([model.encode_queries(b) for b in queries])
        torch.testing.assert_close(q.glob.norm(dim=-1), torch.ones(len(q)))
        model.train()  # dropout: training-mode queries differ
        assert not torch.equal(Features.cat([model.encode_queries(b) for b in queries]).glob, q.glob)


def test_clip_checkpoint_loads_the_stage1_towers(root: Path, tmp_path: Path) -> None:
    dm = synth_dm(root, "synth-cir")
    stage1 = built(dm)
    with torch.no_grad():
        for p in [*stage1.image_encoder.parameters(), *stage1.text_encoder.parameters()]:
            p.add_(torch.randn_like(p))
    state = {
        **{f"image_tower.{k}": v for k, v in stage1.image_encoder.state_dict().items()},
        **{f"text_tower.{k}": v for k, v in stage1.text_encoder.state_dict().items()},
        "logit_scale": torch.tensor(2.0),
    }
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "clip_ft.ckpt")
    model = built(dm, clip_checkpoint=str(tmp_path / "clip_ft.ckpt"))
    for a, b in ((model.image_encoder, stage1.image_encoder), (model.text_encoder, stage1.text_encoder)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    torch.save({"state_dict": {"image_tower.cls": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="image_tower"):
        built(dm, clip_checkpoint=str(tmp_path / "bad.ckpt"))


def test_cli_fit_and_test_on_synth_cir(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, cir_args(root), model=CLIP4Cir)
    assert rec["dataset"] == "synth-cir" and rec["global_step"] == 2
    assert rec["details"]["protocol"] == "cirr" and "R1" in rec["metrics"]


def test_cli_fit_and_test_on_fashioniq(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, fiq_args(root), model=CLIP4Cir)
    assert rec["dataset"] == "fashioniq" and rec["details"]["protocol"] == "fiq_a" and "avg" in rec["metrics"]


@pytest.mark.slow
def test_tiny_profile_learns_synth_cir(tmp_path: Path) -> None:
    assert_learns_synth_cir(CLIP4Cir, tmp_path)
