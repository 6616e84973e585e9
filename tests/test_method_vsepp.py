"""VSE++ (methods/vsepp.py; docs/methods.md §8): method-level properties, the shared checks of docs/methods.md
§0 on region features (on images: test_contract.py), runs through the CLI on images, region features and
person data, and the paper profile built offline with random local CNN weights. The loss's own properties
live in tests/test_losses.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from method_checks import (
    MODERATE_SIZES,
    PRECOMP_SIZES,
    attach,
    cli_fit,
    first_batch,
    loss_fell,
    moderate_fit,
    shared_checks,
    synth_args,
    synth_dm,
)

from datamodules.itm import Flickr30KDataModule
from fgbench.data.batches import VisualBatch
from fgbench.data.module import RetrievalDataModule, family_of
from fgbench.encoders.tokenizers import build_vocabulary
from fgbench.losses import hardest_negative_triplet
from fgbench.losses.warmup import ALL_EPOCHS, summed_hinge_epochs, warmup_label
from fgbench.registry import DATAMODULES, METHODS
from methods.vsepp import VSEPP

from fixtures.itm import write_precomp


def precomp_dm(root: Path, **kw: Any) -> RetrievalDataModule:
    write_precomp(root, "f30k", PRECOMP_SIZES)
    return Flickr30KDataModule(root=str(root), feature_source="precomp", **kw)


def built(dm: RetrievalDataModule, **kw: Any) -> VSEPP:
    L.seed_everything(0)
    return attach(VSEPP(**kw), dm)  # type: ignore[return-value]


# -- method-level properties -----------------------------------------------------------------------------


def test_registered_with_its_tasks() -> None:
    assert METHODS.get("vsepp") is VSEPP
    assert VSEPP.tasks == {"text-image", "image-text"} and "fartashf/vsepp" in VSEPP.provenance


def test_loss_is_the_hinge_on_image_caption_scores(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm, sum_warmup_epochs=0).eval()  # eval: dropout-free, BatchNorm fixed: passes agree
    batch = first_batch(dm)
    S = model.encode_image(batch.visual) @ model.encode_text(batch.text).T
    # brute force: each image against every other caption, each caption against every other image
    n, a = len(S), model.hp.margin
    cap = sum(max(max(a + S[i, j] - S[i, i], 0) for j in range(n) if j != i) for i in range(n))
    img = sum(max(max(a + S[i, j] - S[j, j], 0) for i in range(n) if i != j) for j in range(n))
    torch.testing.assert_close(model.losses(batch)["hinge"], cap + img)
    vse0 = built(dm, max_violation=False).eval()
    assert vse0.losses(batch)["hinge"] >= model.losses(batch)["hinge"]
    warming = built(dm).eval()  # the tiny profile sums the hinge in its first epoch (current_epoch 0 here)
    assert warming.sum_warmup == 1 and warming.current_epoch == 0
    torch.testing.assert_close(warming.losses(batch)["hinge"], vse0.losses(batch)["hinge"])


def test_mask_same_label_removes_same_label_negatives(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm, mask_same_label=True, sum_warmup_epochs=0).eval()
    batch = first_batch(dm)
    assert batch.label.unique().numel() < len(batch.label)  # five captions per image: duplicates occur
    S = model.encode_image(batch.visual) @ model.encode_text(batch.text).T
    same = batch.label[:, None] == batch.label[None, :]
    torch.testing.assert_close(model.losses(batch)["hinge"], hardest_negative_triplet(S, positive_mask=same))
    model.mask_same_label = False
    torch.testing.assert_close(model.losses(batch)["hinge"], hardest_negative_triplet(S))


def test_vocabulary_keeps_words_seen_min_count_times() -> None:
    tok = build_vocabulary(["a red a", "a blue red", "green"], max_words=10, min_count=2, max_len=16)
    assert tok.words == ["a", "red"]
    assert build_vocabulary(["a red a"], max_words=1, min_count=1, max_len=16).words == ["a"]


def test_features_are_unit_vectors_and_checkpoints_load(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm)
    again = built(dm)  # a fresh model on the same data has the same shapes: checkpoints load
    again.load_state_dict(model.state_dict())
    batch = first_batch(dm)
    for f in (model.encode_text(batch.text), model.encode_image(batch.visual)):
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(len(f)))


def test_shared_checks_on_region_features(root: Path) -> None:
    dm = precomp_dm(root)
    model = built(dm)
    assert model.image_encoder is None and model.image_fc.in_features == 8  # the fixture's region size
    shared_checks(model, dm)  # on images: test_contract.py


def test_precomp_image_is_the_projected_mean_region(root: Path) -> None:
    dm = precomp_dm(root, batch_size=4)
    model = built(dm)
    batch: VisualBatch = next(iter(dm.test_dataloader()[1]))
    regions = batch.visual.regions
    expected = torch.nn.functional.normalize(model.image_fc(regions.mean(1)), dim=-1)
    torch.testing.assert_close(model.encode_image(batch.visual), expected)
    with pytest.raises(ValueError, match="region features"):
        model.encode_image(type(batch.visual)(pixels=torch.zeros(1, 3, 32, 32)))


# -- runs through the CLI --------------------------------------------------------------------------------


def cli_run(tmp_path: Path, data: list[str], steps: int = 3) -> dict[str, Any]:
    args = [*data, "--data.batch_size", "8", "--model", "methods.vsepp.VSEPP"]
    return cli_fit(tmp_path / "runs", "vsepp", args, steps)[0]


def test_cli_fit_and_test_on_synth_scenes(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, synth_args(root, "synth-scenes"))
    assert rec["dataset"] == "synth-scenes" and rec["global_step"] == 3
    assert rec["details"]["protocol"] == "f30k_1k" and rec["details"]["variant"] == "images"
    assert {"t2i_R1", "i2t_R1", "rsum"} <= set(rec["metrics"])


def test_cli_fit_and_test_on_precomp_regions(root: Path, tmp_path: Path) -> None:
    write_precomp(root, "f30k", PRECOMP_SIZES)
    data = ["--data", "datamodules.itm.Flickr30KDataModule", "--data.root", str(root)]
    rec = cli_run(tmp_path, [*data, "--data.feature_source", "precomp"])
    assert rec["dataset"] == "f30k" and rec["details"]["variant"] == "precomp"
    assert rec["details"]["protocol"] == "f30k_1k" and "rsum" in rec["metrics"]


def test_cli_fit_and_test_on_synth_person(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, synth_args(root, "synth-person"), steps=2)
    assert rec["dataset"] == "synth-person" and rec["details"]["protocol"] == "person_t2i"
    assert {"R1", "mAP", "mINP"} <= set(rec["metrics"])


# -- paper profile, offline ------------------------------------------------------------------------------


def paper(dm: RetrievalDataModule, weights: Path, **kw: Any) -> VSEPP:
    kw = {"image": {"kwargs": {"model_name": "resnet18"}, "size": (64, 64)}, **kw}
    return built(dm, profile="paper", weights_path=str(weights), **kw)


def test_paper_profile_loads_local_cnn_weights_and_trains(
    root: Path, resnet18_weights: tuple[Path, torch.nn.Module]
) -> None:
    path, src = resnet18_weights
    dm = synth_dm(root, "synth-scenes", batch_size=4)
    model = paper(dm, path)
    assert torch.equal(model.image_encoder.model.conv1.weight, src.conv1.weight)
    assert model.text_encoder.rnn.hidden_size == 1024 and model.image_fc.out_features == 1024
    cfg = model.optim_cfg
    assert (cfg.name, cfg.lr, cfg.schedule, cfg.step_epochs) == ("adam", 2e-4, "step", 15)
    assert model.processor.test_transform == "resize_center_crop"
    batch = first_batch(dm)
    assert batch.visual.pixels.shape[-2:] == (64, 64)
    model.losses(batch)["hinge"].backward()
    assert model.image_encoder.model.conv1.weight.grad is not None


def test_paper_profile_frozen_cnn_and_missing_weights(
    root: Path, resnet18_weights: tuple[Path, torch.nn.Module]
) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=4)
    model = paper(dm, resnet18_weights[0], finetune=False)
    model.losses(first_batch(dm))["hinge"].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.image_fc.weight.grad is not None
    with pytest.raises(ValueError, match="weights_path"):
        VSEPP(profile="paper").build(dm.info())


# -- slow: tiny profile learns ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_profile_learns_synth_scenes(tmp_path: Path) -> None:
    losses, metrics, dm = moderate_fit(VSEPP, "synth-scenes", tmp_path)
    assert loss_fell(losses, epochs=8)
    chance = 100.0 / MODERATE_SIZES["synth-scenes"]["test_images"]
    assert metrics["t2i_R1"] >= 3 * chance


@pytest.mark.parametrize(
    ("given", "dataset", "epochs"),
    [
        (None, "synth-scenes", 1),
        (None, "synth-person", ALL_EPOCHS),
        (None, "cub", ALL_EPOCHS),
        (0, "synth-person", 0),
    ],
)
def test_summed_hinge_warm_up_follows_the_task_family(given: int | None, dataset: str, epochs: int) -> None:
    family = family_of(DATAMODULES.get(dataset).tasks)
    assert summed_hinge_epochs(given, family) == epochs
    assert warmup_label(summed_hinge_epochs(given, family)) == ("all" if epochs == ALL_EPOCHS else epochs)
