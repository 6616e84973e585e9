"""IRRA (methods/irra.py; docs/methods.md §7): unit tests 3 and 4 (the IRR head and classifier are training-
only; one classifier serves both modalities), the `loss_names` ablation, unit-norm queries (the shared
checks of docs/methods.md §0: test_contract.py), fit + test through the CLI and the paper profile built
offline from a tiny random CLIP folder. SDM, masking and MLM's own properties (tests 1 and 2) live in
tests/test_losses.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from method_checks import attach, encoded, save_tiny_clip, tiny_datamodule
from method_checks import first_batch as train_batch
from test_method_clip_ft import assert_learns, cli_args, result_of

from fgbench.cli import main
from fgbench.encoders import WordTokenizer
from fgbench.optim import param_groups
from fgbench.registry import METHODS
from methods.irra import IRRA


def test_registered_with_its_task() -> None:
    assert METHODS.get("irra") is IRRA
    assert IRRA.tasks == {"text-image"} and IRRA.provenance == "port of anosorae/IRRA"


def test_deleting_the_irr_head_and_classifier_leaves_encoding_bit_identical(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(IRRA(), dm).eval()
    q, g = encoded(model, dm)
    for name in (*IRRA.IRR_HEAD, "classifier"):
        delattr(model, name)
    q2, g2 = encoded(model, dm)
    assert torch.equal(q.glob, q2.glob) and torch.equal(g.glob, g2.glob)


def test_both_modalities_share_one_classifier(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(IRRA(loss_names=("id",)), dm)
    assert model.classifier.out_features == dm.num_classes
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.2)
    assert model.classifier.bias.eq(0).all()
    heads = [n for n, m in model.named_modules() if getattr(m, "out_features", None) == dm.num_classes]
    assert heads == ["classifier"]
    model.losses(train_batch(dm))["id"].backward()
    for tower in (model.image_tower, model.text_tower):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())


def test_irr_head_predicts_the_word_vocabulary(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(IRRA(), dm)
    assert isinstance(model.tokenizer, WordTokenizer)
    assert (
        model.mask_id == WordTokenizer.mask_id
        and model.mlm_head.fc.out_features == model.tokenizer.vocab_size
    )
    assert model.cross_attn.num_heads == 1 and len(model.cross_modal_transformer.layers) == 1
    terms = model.losses(train_batch(dm))
    assert set(terms) == {"sdm", "mlm", "id"} and all(torch.isfinite(v) for v in terms.values())
    terms["mlm"].backward()
    assert model.cross_attn.in_proj_weight.grad is not None and model.text_tower.embed.weight.grad is not None


@pytest.mark.parametrize("names", [("sdm",), ("itc", "id"), ("sdm", "mlm")])
def test_loss_names_ablation(root: Path, names: tuple[str, ...]) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(IRRA(loss_names=names), dm)
    assert set(model.losses(train_batch(dm))) == set(names)
    assert hasattr(model, "mlm_head") == ("mlm" in names)
    assert (model.classifier is not None) == ("id" in names)


def test_temperature_is_learnt_in_the_tiny_profile_only(root: Path) -> None:
    assert IRRA(profile="paper").temperature().item() == pytest.approx(0.02)  # IRRA's fixed τ
    assert not IRRA(profile="paper").logit_scale.requires_grad
    assert not IRRA(temperature_learnable=False).logit_scale.requires_grad
    dm = tiny_datamodule(root, "synth-person")
    model = attach(IRRA(loss_names=("sdm",)), dm)
    assert model.temperature().item() == pytest.approx(0.07)
    model.losses(train_batch(dm))["sdm"].backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


def test_rejects_unknown_loss_names() -> None:
    with pytest.raises(ValueError, match="loss_names"):
        IRRA(loss_names=("sdm", "cmpm"))
    with pytest.raises(ValueError, match="loss_names"):
        IRRA(loss_names=())


def test_queries_are_unit_vectors(root: Path) -> None:  # the shared checks: test_contract.py
    dm = tiny_datamodule(root, "synth-person")
    q, _ = encoded(attach(IRRA(), dm).eval(), dm)
    assert torch.allclose(q.glob.norm(dim=-1), torch.ones(len(q)))


def test_fit_then_test_from_the_checkpoint_through_the_cli(root: Path, tmp_path: Path) -> None:
    args = cli_args(root, tmp_path, "synth-person", "irra")
    assert main(args) == 0
    rec = result_of(tmp_path, "synth-person", "irra")
    assert rec["details"]["protocol"] == "person_t2i" and rec["global_step"] == 2
    assert rec["provenance_note"] == "port of anosorae/IRRA" and set(rec["metrics"]) >= {"R1", "mAP"}
    # a fresh model builds the same modules from the data, so the checkpoint loads and scores the same
    ckpt = Path(rec["run_dir"]) / "checkpoints" / "last.ckpt"
    assert main(["test", *args[1:], "--ckpt_path", str(ckpt)]) == 0
    (path,) = (tmp_path / "runs" / "synth-person" / "irra" / "tiny").glob("seed*/result.json")
    retested = json.loads(path.read_text())  # the test of the run's checkpoint confirms the run's result
    assert retested["metrics"] == pytest.approx(rec["metrics"]) and len(retested["tests"]) == 1


def test_paper_profile_from_a_local_clip_folder(root: Path, tmp_path: Path) -> None:
    clip_dir = save_tiny_clip(tmp_path / "clip")
    dm = tiny_datamodule(root, "synth-person")
    model = attach(IRRA(profile="paper", clip_path=str(clip_dir), image={"size": (32, 16)}), dm)
    # byte-level test vocabulary: 512 byte tokens, then SOT 512 and EOT 513; SOT - 1 serves as <|mask|>
    assert model.mask_id == 511 and model.mlm_head.fc.out_features == 514
    assert len(model.cross_modal_transformer.layers) == 4
    lrs = {g["lr"] for g in param_groups(model, model.optim_cfg)}
    assert lrs == {1e-5, 2e-5, 5e-5}  # base, biases x2, heads x5 (IRRA) and model.optim_cfg.name == "adam"
    terms = model.losses(train_batch(dm))
    sum(terms.values()).backward()
    assert model.mlm_head.fc.weight.grad is not None and model.image_tower.proj.weight.grad is not None


@pytest.mark.slow
def test_tiny_profile_learns_synth_scenes(tmp_path: Path) -> None:
    # on moderate synth-person, 8 tiny epochs reach test R@1 1.95 (chance 1.56): not yet 3x chance
    assert_learns(IRRA(), "synth-scenes", tmp_path)
