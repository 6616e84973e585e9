"""clip_ft (methods/clip_ft.py; docs/methods.md §5): the loss at equal features and under swapped modalities,
the composed loss's duplicate targets, tower freezing, unit-norm queries, fit + test through the CLI on
every task (synth-person, synth-scenes, synth-cir) and the paper profile built offline from a tiny random
CLIP folder. InfoNCE's own properties live in tests/test_losses.py.

The shared checks of docs/methods.md §0, for every method, are test_contract.py's.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from method_checks import SYNTH_SIZES, attach, encoded, fit_and_test, tiny_datamodule
from method_checks import first_batch as train_batch

from fgbench.cli import main
from fgbench.data.batches import PairBatch, Text, TripletBatch
from fgbench.registry import DATAMODULES, METHODS
from methods.clip_ft import ClipFT

SIZES = SYNTH_SIZES
PROTOCOL = {"synth-person": "person_t2i", "synth-scenes": "f30k_1k", "synth-cir": "cirr"}
CONFIG = Path(__file__).parents[1] / "experiments" / "configs"
# jsonargparse resolves SynthCIRDataModule's test_split to CIRRDataModule's "test" (reported); say "val"
CLI_DATA: dict[str, list[str]] = {"synth-cir": ["--data.test_split", "val"]}


def test_registered_with_its_tasks() -> None:
    assert METHODS.get("clip_ft") is ClipFT
    assert ClipFT.tasks == {"text-image", "image-text", "composed"} and ClipFT.provenance == "suite baseline"


def test_loss_is_log_batch_when_all_features_are_equal(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(ClipFT(), dm)
    batch: PairBatch = train_batch(dm)
    b = len(batch.index)
    same = replace(
        batch,
        visual=replace(batch.visual, pixels=batch.visual.pixels[:1].expand(b, -1, -1, -1)),
        text=Text(
            raw=batch.text.raw[:1] * b,
            input_ids=batch.text.input_ids[:1].expand(b, -1),
            attention_mask=batch.text.attention_mask[:1].expand(b, -1),
        ),
    )
    assert model.losses(same)["itc"].item() == pytest.approx(math.log(b), abs=1e-4)
    assert model.losses(batch)["itc"].item() != pytest.approx(math.log(b), abs=1e-4)


def test_swapping_the_modalities_leaves_the_loss_unchanged(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(ClipFT(logit_scale_learnable=True), dm)
    batch: PairBatch = train_batch(dm)
    t, v = model.text_out(batch.text).glob, model.image_out(batch.visual).glob
    assert model.losses(batch)["itc"] == model.pair_loss(t, v)
    torch.testing.assert_close(model.pair_loss(t, v), model.pair_loss(v, t))


def test_scale_by_profile_task_family_and_switch(root: Path, clip_dir: Path) -> None:
    for name in ("synth-person", "synth-scenes", "synth-cir"):  # tiny: learnable everywhere (from scratch)
        tiny = attach(ClipFT(), tiny_datamodule(root, name))
        assert tiny.logit_scale.requires_grad and tiny.scale().item() == pytest.approx(1 / 0.07)
    paper = {"clip_path": str(clip_dir), "profile": "paper", "image": {"size": (32, 32)}}
    person = attach(ClipFT(**paper), tiny_datamodule(root, "synth-person"))
    scenes = attach(ClipFT(**paper), tiny_datamodule(root, "synth-scenes"))
    cir = attach(ClipFT(**paper), tiny_datamodule(root, "synth-cir"))
    assert person.scale().item() == pytest.approx(50.0) and not person.logit_scale.requires_grad
    assert scenes.scale().item() == pytest.approx(1 / 0.07) and scenes.logit_scale.requires_grad
    assert cir.scale().item() == pytest.approx(100.0) and not cir.logit_scale.requires_grad
    fixed = attach(ClipFT(logit_scale_learnable=False), tiny_datamodule(root, "synth-person"))
    assert not fixed.logit_scale.requires_grad and fixed.scale().item() == pytest.approx(50.0)
    forced = attach(ClipFT(logit_scale_learnable=True), tiny_datamodule(root, "synth-person"))
    assert forced.logit_scale.requires_grad and forced.scale().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        forced.logit_scale.fill_(10.0)
    assert forced.scale().item() == 100.0  # CLIP's clamp


def test_composed_loss_never_counts_the_same_target_as_a_negative(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-cir")
    model = attach(ClipFT(), dm)
    batch: TripletBatch = train_batch(dm)
    same = replace(
        batch,
        target=replace(batch.target, pixels=batch.target.pixels[:1].expand_as(batch.target.pixels)),
        target_label=torch.zeros_like(batch.target_label),
    )
    assert model.losses(same)["cir"].item() == pytest.approx(0.0, abs=1e-6)
    assert model.losses(batch)["cir"].item() > 0.01


@pytest.mark.parametrize("fusion", ["sum", "image_only", "text_only"])
def test_query_fusion(root: Path, fusion: str) -> None:
    dm = tiny_datamodule(root, "synth-cir")
    model = attach(ClipFT(query_fusion=fusion), dm).eval()
    q_loader, _ = dm.test_dataloader()
    batch = next(iter(q_loader))
    with torch.no_grad():
        ref, txt = model.image_out(batch.reference).glob, model.text_out(batch.text).glob
        got = model.encode_queries(batch).glob
    raw = {"sum": ref + txt, "image_only": ref, "text_only": txt}[fusion]
    torch.testing.assert_close(got, torch.nn.functional.normalize(raw, dim=-1))


@pytest.mark.parametrize(("encoder", "frozen"), [("text", "image_tower"), ("image", "text_tower")])
def test_encoder_switch_freezes_the_other_tower(root: Path, encoder: str, frozen: str) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(ClipFT(encoder=encoder), dm)
    model.losses(train_batch(dm))["itc"].backward()
    trained = "text_tower" if frozen == "image_tower" else "image_tower"
    assert all(p.grad is None and not p.requires_grad for p in getattr(model, frozen).parameters())
    assert all(p.grad is not None for p in getattr(model, trained).parameters() if p.requires_grad)


def test_build_is_idempotent_and_rejects_unknown_switches(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(ClipFT(), dm)
    tower = model.image_tower
    model.build(dm.info())
    assert model.image_tower is tower
    with pytest.raises(ValueError, match="query_fusion"):
        ClipFT(query_fusion="concat")
    with pytest.raises(ValueError, match="encoder"):
        ClipFT(encoder="neither")
    with pytest.raises(TypeError, match="unknown profile override"):
        ClipFT(image_sise=(32, 32))
    with pytest.raises(ValueError, match="profile"):
        ClipFT(profile="huge")


@pytest.mark.parametrize("name", ["synth-person", "synth-cir"])
def test_queries_are_unit_vectors(root: Path, name: str) -> None:
    dm = tiny_datamodule(root, name)
    q, g = encoded(attach(ClipFT(), dm).eval(), dm)
    assert torch.allclose(q.glob.norm(dim=-1), torch.ones(len(q))) and len(g) > 1


def cli_args(root: Path, tmp_path: Path, name: str, method: str, *extra: str) -> list[str]:
    sizes = json.dumps(SIZES[name])
    return [
        "fit",
        "--config",
        str(CONFIG / "method" / f"{method}.yaml"),
        "--config",
        str(CONFIG / "profile" / "tiny.yaml"),
        "--data",
        _class_path(name),
        "--data.root",
        str(root),
        "--data.sizes",
        sizes,
        "--data.batch_size",
        "4",
        "--trainer.max_steps",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--run.root",
        str(tmp_path / "runs"),
        *CLI_DATA.get(name, []),
        *extra,
    ]


def _class_path(name: str) -> str:
    cls = DATAMODULES.get(name)
    return f"{cls.__module__}.{cls.__qualname__}"


def result_of(tmp_path: Path, name: str, method: str) -> dict[str, Any]:
    (path,) = (tmp_path / "runs" / name / method / "tiny").glob("seed*/result.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", sorted(SIZES))
def test_fit_and_test_through_the_cli(root: Path, tmp_path: Path, name: str) -> None:
    assert main(cli_args(root, tmp_path, name, "clip_ft")) == 0
    rec = result_of(tmp_path, name, "clip_ft")
    assert rec["details"]["protocol"] == PROTOCOL[name] and rec["global_step"] == 2
    assert rec["provenance_note"] == "suite baseline" and rec["metrics"]


def test_profile_fields_are_settable_from_the_command_line(root: Path, tmp_path: Path) -> None:
    # `overrides` is the CLI's way to profile fields (keyword arguments are invisible to LightningCLI)
    extra = ("--model.init_args.overrides", "{max_len: 6, image: {size: [32, 16]}}")
    assert main(cli_args(root, tmp_path, "synth-person", "clip_ft", *extra)) == 0
    (ckpt,) = (tmp_path / "runs").glob("synth-person/clip_ft/tiny/seed*/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert state["image_tower.pos"].shape[0] == 1 + (32 // 8) * (16 // 8)  # CLS + 4 x 2 patches
    assert state["text_tower.pos"].shape[0] == 6 + 2  # max_len words + bos/eos
    assert ClipFT(overrides={"max_len": 6}, max_len=6).hp.max_len == 6
    with pytest.raises(TypeError, match="given both in `overrides` and as keywords"):
        ClipFT(overrides={"max_len": 6}, max_len=8)


def test_paper_profile_from_a_local_clip_folder(root: Path, clip_dir: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(ClipFT(profile="paper", clip_path=str(clip_dir), image={"size": (32, 16)}), dm)
    assert model.optim_cfg.name == "adam" and model.optim_cfg.eps == 1e-3 and model.optim_cfg.lr == 1e-5
    assert model.processor.image_size == (32, 16) and model.processor.train_transform == "reid_crop"
    batch: PairBatch = train_batch(dm)
    assert batch.text.input_ids.shape == (4, 77) and batch.visual.pixels.shape[-2:] == (32, 16)
    loss = model.losses(batch)["itc"]
    loss.backward()
    assert torch.isfinite(loss) and model.image_tower.proj.weight.grad is not None
    scenes = attach(
        ClipFT(profile="paper", clip_path=str(clip_dir), image={"size": (32, 32)}),
        tiny_datamodule(root, "synth-scenes"),
    )
    assert scenes.optim_cfg.weight_decay == 0.2 and scenes.logit_scale.requires_grad


def test_paper_profile_without_weights_fails_naming_the_path(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-clip-here"):
        attach(
            ClipFT(profile="paper", clip_path=str(tmp_path / "no-clip-here")),
            tiny_datamodule(root, "synth-person"),
        )


# moderate synthetic sizes, so a tiny-profile run takes well under a minute on an idle 2-core machine
MODERATE: dict[str, dict[str, int]] = {
    "synth-person": {"train_ids": 200, "val_ids": 16, "test_ids": 64, "images_per_id": 4},
    "synth-scenes": {"train_images": 400, "val_images": 20, "test_images": 50},
}
# the R@1 metric of each dataset's protocol and its chance level (%): one relevant id / image among many
CHANCE: dict[str, tuple[str, float]] = {
    "synth-person": ("R1", 100 / 64),
    "synth-scenes": ("t2i_R1", 100 / 50),
}


def assert_learns(model: Any, name: str, tmp_path: Path, epochs: int = 8) -> dict[str, float]:
    """Tiny profile on a moderate synthetic dataset: a fixed batch's loss falls, test R@1 >= 3x chance."""
    import lightning as L

    L.seed_everything(0)
    dm = DATAMODULES.get(name)(root=str(tmp_path / "data"), sizes=MODERATE[name], batch_size=32)
    dm.setup("fit")
    attach(model, dm)
    batch = train_batch(dm)
    before = sum(model.losses(batch).values()).item()
    _, metrics = fit_and_test(model, dm, tmp_path, epochs)
    after = sum(model.losses(batch).values()).item()
    metric, chance = CHANCE[name]
    assert after < before and metrics[metric] >= 3 * chance, (before, after, metrics)
    return metrics


@pytest.mark.slow
def test_tiny_profile_learns_synth_scenes(tmp_path: Path) -> None:
    assert_learns(ClipFT(), "synth-scenes", tmp_path)
