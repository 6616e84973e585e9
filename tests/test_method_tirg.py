"""TIRG (methods/tirg.py; docs/methods.md §9): the composition, the scaled normalisation, the losses against
explicit formulas, a reversed batch encoding to reversed rows (the shared checks: test_contract.py), runs
through the CLI on synth-cir and a FashionIQ fixture, and the paper profile built offline with random local
CNN weights."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from method_checks import (
    SYNTH_SIZES,
    assert_learns_synth_cir,
    attach,
    cli_fit,
    eval_batches,
    first_batch,
    synth_dm,
)

from fgbench.data.module import RetrievalDataModule
from fgbench.encoders.composers import GatedResidualComposer
from fgbench.features import Features
from fgbench.registry import METHODS
from methods.tirg import TIRG, soft_triplet_loss

from fixtures.composed import write_fashioniq

CIR = SYNTH_SIZES["synth-cir"]


def built(dm: RetrievalDataModule, **kw: Any) -> TIRG:
    L.seed_everything(0)
    return attach(TIRG(**kw), dm)  # type: ignore[return-value]


def test_registered_with_its_tasks() -> None:
    assert METHODS.get("tirg") is TIRG
    assert TIRG.tasks == {"composed"} and "google/tirg" in TIRG.provenance


def test_composition_initial_weights_and_saturated_gate() -> None:
    torch.manual_seed(0)
    comp = GatedResidualComposer(8, (1.0, 10.0)).eval()
    assert comp.a.tolist() == [1.0, 10.0]
    img, txt = torch.randn(5, 8), torch.randn(5, 8)
    with torch.no_grad():
        comp.a[0], comp.a[1] = 2.5, 0.0
        comp.gate[-1].weight.zero_()
        comp.gate[-1].bias.fill_(50.0)  # σ(50) = 1 in float32
    torch.testing.assert_close(comp(img, txt), 2.5 * img)


def test_outputs_have_norm_s_and_eval_features_unit_norm(root: Path) -> None:
    dm = synth_dm(root, "synth-cir", batch_size=4)
    model = built(dm).eval()
    batch = first_batch(dm)
    with torch.no_grad():
        model.norm.scale.fill_(3.0)
    for y in (model.query_vectors(batch.reference, batch.text), model.target_vectors(batch.target)):
        torch.testing.assert_close(y.norm(dim=-1), torch.full((len(y),), 3.0))
    assert model.norm.scale.requires_grad and float(TIRG().norm.scale) == 4.0
    g = model.encode_gallery(type("B", (), {"index": batch.index, "visual": batch.target})())
    torch.testing.assert_close(g.glob.norm(dim=-1), torch.ones(len(batch.index)))


def explicit_ce(logits: torch.Tensor, excluded: set[tuple[int, int]] = frozenset()) -> torch.Tensor:
    terms = []
    for i in range(len(logits)):
        denom = sum(math.exp(logits[i, j]) for j in range(len(logits)) if (i, j) not in excluded)
        terms.append(-(float(logits[i, i]) - math.log(denom)))
    return torch.tensor(sum(terms) / len(terms))


def test_classification_loss_equals_an_explicit_ce(root: Path) -> None:
    dm = synth_dm(root, "synth-cir", batch_size=4)
    model = built(dm).eval()  # dropout off, BatchNorm fixed: the loss sees the same features as below
    batch = first_batch(dm)
    assert batch.target_label.unique().numel() == 4
    logits = model.query_vectors(batch.reference, batch.text) @ model.target_vectors(batch.target).T
    torch.testing.assert_close(model.losses(batch)["classification"], explicit_ce(logits.detach()))
    # two items with the same target: neither is the other's negative
    dup = replace(batch, target_label=batch.target_label.clone())
    dup.target_label[1] = dup.target_label[0]
    got = model.losses(dup)["classification"]
    torch.testing.assert_close(got, explicit_ce(logits.detach(), {(0, 1), (1, 0)}))
    model.mask_same_target = False
    torch.testing.assert_close(model.losses(dup)["classification"], explicit_ce(logits.detach()))


def test_soft_triplet_loss_over_all_triplets_when_fewer_than_three() -> None:
    """With two items, each anchor has one positive and two negatives: every triplet is used."""
    q, g = torch.randn(2, 4), torch.randn(2, 4)
    x = torch.cat([q, g])
    d = torch.cdist(x, x).pow(2)
    pairs = {0: 2, 1: 3, 2: 0, 3: 1}
    terms = [
        math.log1p(math.exp(d[i, j] - d[i, k])) for i, j in pairs.items() for k in range(4) if k not in (i, j)
    ]
    got = soft_triplet_loss(q, g, torch.tensor([7, 9]))
    torch.testing.assert_close(got, torch.tensor(sum(terms) / len(terms)))


def test_soft_triplet_takes_three_triplets_per_anchor_and_trains(root: Path) -> None:
    torch.manual_seed(0)
    q, g = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4)
    losses = {float(soft_triplet_loss(q, g, torch.arange(6))) for _ in range(5)}
    assert len(losses) > 1  # random triplets: 3 of the 10 negatives per anchor
    dm = synth_dm(root, "synth-cir", batch_size=4)
    model = built(dm, soft_triplet=True)
    loss = model.losses(first_batch(dm))
    assert set(loss) == {"soft_triplet"}
    loss["soft_triplet"].backward()
    assert model.composer.a.grad is not None and model.norm.scale.grad is not None


def test_a_reversed_batch_gives_the_same_rows_reversed(root: Path) -> None:  # shared checks: test_contract
    dm = synth_dm(root, "synth-cir")
    model = built(dm).eval()
    queries, _ = eval_batches(dm, 64)
    with torch.no_grad():
        q = Features.cat([model.encode_queries(b) for b in queries])
        (whole,) = queries
        rev = type(whole)(
            index=whole.index.flip(0),
            reference=type(whole.reference)(pixels=whole.reference.pixels.flip(0)),
            text=type(whole.text)(
                raw=whole.text.raw[::-1],
                input_ids=whole.text.input_ids.flip(0),
                attention_mask=whole.text.attention_mask.flip(0),
            ),
        )
        torch.testing.assert_close(model.encode_queries(rev).glob, q.glob.flip(0))


def cli_run(tmp_path: Path, data: list[str], model: type = TIRG) -> dict[str, Any]:
    """`fit` (2 steps, then test) through the CLI; the run's result.json."""
    return cli_fit(
        tmp_path / "runs", model.name, [*data, "--model", f"{model.__module__}.{model.__qualname__}"]
    )[0]


def cir_args(root: Path) -> list[str]:
    cir = "datamodules.synthetic.datamodules.SynthCIRDataModule"
    sizes = json.dumps(CIR)
    return ["--data", cir, "--data.root", str(root), "--data.sizes", sizes, "--data.batch_size", "4"]


def fiq_args(root: Path) -> list[str]:
    write_fashioniq(root)
    fiq = "datamodules.fashioniq.FashionIQDataModule"
    return ["--data", fiq, "--data.root", str(root), "--data.batch_size", "3", "--data.test_split", "val"]


def test_cli_fit_and_test_on_synth_cir(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, cir_args(root))
    assert rec["dataset"] == "synth-cir" and rec["global_step"] == 2
    assert rec["details"]["protocol"] == "cirr" and "R1" in rec["metrics"]


def test_cli_fit_and_test_on_fashioniq(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, fiq_args(root))
    assert rec["dataset"] == "fashioniq" and rec["global_step"] == 2
    assert rec["details"]["protocol"] == "fiq_a" and {"dress_R10", "avg_R10", "avg"} <= set(rec["metrics"])


def test_paper_profile_offline(root: Path, resnet18_weights: tuple[Path, torch.nn.Module]) -> None:
    path, src = resnet18_weights
    dm = synth_dm(root, "synth-cir", batch_size=4)
    model = built(dm, profile="paper", weights_path=str(path), image={"size": (64, 64)})
    assert torch.equal(model.image_encoder.model.conv1.weight, src.conv1.weight)
    assert model.image_fc.in_features == 512 and model.text_encoder.rnn.hidden_size == 512
    cfg = model.optim_cfg
    assert (cfg.name, cfg.lr, cfg.weight_decay, cfg.lr_mult) == ("sgd", 1e-2, 1e-6, {"image_encoder.": 0.1})
    assert model.processor.train_transform == model.processor.test_transform == "center_crop"
    batch = first_batch(dm)
    assert batch.reference.pixels.shape[-2:] == (64, 64)
    model.losses(batch)["classification"].backward()
    assert model.image_encoder.model.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="weights_path"):
        TIRG(profile="paper")


@pytest.mark.slow
def test_tiny_profile_learns_synth_cir(tmp_path: Path) -> None:
    assert_learns_synth_cir(TIRG, tmp_path)
