"""MMRef (methods/mmref.py; docs/methods.md §1).

- The five unit tests of §1: gradient routing of L_Fuse and L_RGRL; the refinement permutes only within the
  top-k and is the coarse ranking at λ = 0 or k = 1; reference-space similarity; the masked-word loss ignores
  unmasked positions and depends on the reference tokens; L_Fuse -> 0 for exact cluster means as τ_f -> 0.
- The references: one per training identity, class-mean initialisation (deterministic), kept on resume.
- Every ablation switch; the reference features (the shared checks of docs/methods.md §0: test_contract.py).
- Fit + test through the CLI on the synthetic datasets and the official-format fixtures; the paper profile
  built offline from a tiny random CLIP folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from method_checks import (
    attach,
    config_fit,
    cpu_trainer,
    encoded,
    first_batch,
    paper_config,
    save_tiny_clip,
    synth_args,
    tiny_datamodule,
)
from test_method_clip_ft import assert_learns

import methods.mmref as mmref_module
from fgbench.cli import main
from fgbench.data.batches import PairBatch
from fgbench.data.module import RetrievalDataModule
from fgbench.evaluation import EvalSpec, FunctionSource
from fgbench.evaluation.engine import Direction, Options, direction_stats
from fgbench.features import Features
from fgbench.losses import IGNORE_INDEX, mask_tokens
from fgbench.optim import OptimConfig, param_groups
from fgbench.registry import METHODS
from methods.mmref import MMRef, reference_nce

from fixtures.itm import write_f30k_images
from fixtures.person import write_rstpreid
from fixtures.reed import write_cub

CONFIG = Path(__file__).parents[1] / "experiments" / "configs"


def built(root: Path, init: bool = True, **kw: Any) -> tuple[MMRef, RetrievalDataModule]:
    """An MMRef built on MINI synth-person, its references initialised as at fit start, and the data."""
    L.seed_everything(0)
    dm = tiny_datamodule(root, "synth-person")
    model = attach(MMRef(**kw), dm)
    if init and not bool(model.references_ready):
        model.init_references(dm)
    return model, dm  # type: ignore[return-value]


def group_of(model: MMRef) -> dict[str, Any]:
    """The optimiser parameter group holding R."""
    (group,) = [
        g for g in param_groups(model, model.optim_cfg) if any(p is model.references for p in g["params"])
    ]
    return group


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_registered_with_its_task_and_provenance() -> None:
    assert METHODS.get("mmref") is MMRef
    assert MMRef.tasks == {"text-image"}
    assert MMRef.provenance == "re-implementation from the paper's description"
    assert "re-implementation from the paper's description" in (mmref_module.__doc__ or "")


# -- references -------------------------------------------------------------------------------------------


def test_references_are_one_per_training_identity_and_start_at_class_means(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(MMRef(), dm)
    assert model.references.shape == (dm.num_classes, model.image_tower.out_dim)
    assert not bool(model.references_ready) and model.references.eq(0).all()
    rng = torch.get_rng_state()
    model.init_references(dm)
    assert torch.equal(torch.get_rng_state(), rng)  # the pass draws no random number
    assert bool(model.references_ready) and model.training
    # brute force: every training pair encoded alone, test transform, eval mode
    ds = dm.loaded.train.with_transform(model.processor.image_transform(False))
    model.eval()
    sums = torch.zeros_like(model.references)
    with torch.no_grad():
        for i in range(len(ds)):
            b: PairBatch = dm.train_dataloader().collate_fn([ds[i]])
            v = F.normalize(model.image_out(b.visual).glob, dim=-1)
            t = F.normalize(model.text_out(b.text).glob, dim=-1)
            sums[b.label] += v + t
    torch.testing.assert_close(model.references.detach(), F.normalize(sums, dim=-1), atol=1e-5, rtol=1e-5)
    again = model.references.detach().clone()
    model.init_references(dm)
    assert torch.equal(model.references.detach(), again)  # deterministic


def test_normal_init_and_no_second_initialisation(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = built(root, ref_init="normal", init=False)
    assert bool(model.references_ready)
    assert model.references.std().item() == pytest.approx(0.02, rel=0.3)

    def fail(*args: Any) -> None:
        raise AssertionError("references re-initialised")

    monkeypatch.setattr(model, "init_references", fail)
    model.on_fit_start()  # R already set: nothing to do


def test_resumed_fit_loads_the_references_from_the_checkpoint(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def trainer(steps: int) -> L.Trainer:
        return cpu_trainer(tmp_path, max_steps=steps, limit_val_batches=0)

    L.seed_everything(0)
    first = MMRef()
    t1 = trainer(2)
    t1.fit(first, datamodule=tiny_datamodule(root, "synth-person"))
    ckpt = tmp_path / "two.ckpt"
    t1.save_checkpoint(ckpt)
    trained = first.references.detach().clone()
    resumed = MMRef()
    monkeypatch.setattr(resumed, "init_references", lambda dm: pytest.fail("R re-initialised on resume"))
    trainer(2).fit(resumed, datamodule=tiny_datamodule(root, "synth-person"), ckpt_path=ckpt)
    assert torch.equal(resumed.references.detach(), trained) and bool(resumed.references_ready)


# -- docs/methods.md §1 unit tests ---------------------------------------------------------------------------


def test_1_fuse_reaches_only_the_references_rgrl_only_the_encoders(root: Path) -> None:
    model, dm = built(root)
    batch = first_batch(dm)
    model.losses(batch)["fuse"].backward()
    assert model.references.grad is not None and model.references.grad.abs().sum() > 0
    towers = (model.image_tower, model.text_tower)
    assert all(p.grad is None for t in towers for p in t.parameters())
    model.zero_grad(set_to_none=True)
    model.losses(batch)["rgrl"].backward()
    assert model.references.grad is None
    assert all(grads(t) for t in towers)
    model.zero_grad(set_to_none=True)
    model.losses(batch)["lr"].backward()  # L_LR: R, the LR block and the text encoder
    assert model.references.grad.abs().sum() > 0 and grads(model.lr_block) and grads(model.text_tower)
    assert not grads(model.image_tower)


def random_features(n_q: int = 12, n_g: int = 20, d: int = 16, m: int = 9, seed: int = 0) -> tuple:
    """An un-built MMRef with random references, and random unit query/gallery features with aux `ref`."""
    g = torch.Generator().manual_seed(seed)
    model = MMRef()
    model.references = torch.nn.Parameter(torch.randn(m, d, generator=g))
    unit = lambda n: F.normalize(torch.randn(n, d, generator=g), dim=-1)  # noqa: E731
    q = model._with_ref(Features(index=torch.arange(n_q), glob=unit(n_q)))
    gal = model._with_ref(Features(index=torch.arange(n_g), glob=unit(n_g)))
    return model, q, gal


def final_order(model: MMRef, q: Features, g: Features, k: int | None) -> torch.Tensor:
    """Each query's full final order of the gallery through the evaluator's (re-rank) path."""
    src = FunctionSource(
        lambda r, c: model.score(q.take(r), g.take(c)),
        len(q),
        len(g),
        pair_fn=lambda r, c: model.rescore_pairs(q.take(r.flatten()), g.take(c.flatten())).view(r.shape),
    )
    d = Direction(source=src, row_labels=None, col_labels=torch.zeros(len(g), dtype=torch.long), topk=len(g))
    return direction_stats(d, Options(rerank_k=k))["topk"]


@pytest.mark.parametrize("k", [1, 3, 8])
def test_2_refinement_permutes_only_within_the_top_k(k: int) -> None:
    model, q, g = random_features()
    model.lam = 5.0
    coarse, fine = final_order(model, q, g, None), final_order(model, q, g, k)
    torch.testing.assert_close(fine[:, k:], coarse[:, k:], atol=0, rtol=0)
    assert torch.equal(fine[:, :k].sort(1).values, coarse[:, :k].sort(1).values)
    if k == 1:
        assert torch.equal(fine, coarse)
    else:
        assert not torch.equal(fine, coarse)  # λ = 5 re-orders some top-k
    model.lam = 0.0
    assert torch.equal(final_order(model, q, g, k), coarse)


def test_2_refinement_goes_through_the_evaluator_and_is_recorded() -> None:
    model, q, g = random_features()
    spec = EvalSpec("person_t2i", torch.arange(len(q)) % 5, torch.arange(len(g)) % 5)
    res = model.evaluate_features(q, g, spec)
    assert res.details["rerank_k"] == 50 and res.details["rerank_s"] >= 0.0
    assert res.details["rerank_pairs"] == len(q) * len(g)  # k = 50 clamped to the 20 gallery items
    model.lam = 0.0
    plain = model.evaluate_features(q, g, spec).metrics
    model.rerank_k = None
    assert model.evaluate_features(q, g, spec).metrics == plain
    assert "rerank_s" not in model.evaluate_features(q, g, spec).details


@pytest.mark.parametrize("space", ["softmax", "cosine"])
def test_3_reference_space_similarity(space: str) -> None:
    model, q, g = random_features()
    model.ref_space = space
    rq, rg = model.reference_vector(q.glob), model.reference_vector(g.glob)
    torch.testing.assert_close((rq * rq).sum(-1), torch.ones(len(q)))
    s = rq @ rg.T
    torch.testing.assert_close(s, (rg @ rq.T).T)
    torch.testing.assert_close(rg @ rg.T, (rg @ rg.T).T)
    perm = torch.randperm(len(model.references), generator=torch.Generator().manual_seed(1))
    model.references = torch.nn.Parameter(model.references.detach()[perm])
    torch.testing.assert_close(model.reference_vector(q.glob) @ model.reference_vector(g.glob).T, s)
    assert q.aux["ref"].dtype == torch.bfloat16 and q.aux["ref"].shape == (len(q), len(model.references))


def test_4_masked_word_loss_ignores_unmasked_positions_and_uses_the_reference_tokens(root: Path) -> None:
    model, dm = built(root)
    batch = first_batch(dm)
    text, refs = batch.text, model.reference_tokens(batch.label)
    vocab = model.mlm_head.fc.out_features
    torch.manual_seed(3)
    _, labels = mask_tokens(
        text.input_ids, text.attention_mask, model.special_ids, model.mask_id, vocab, prob=model.hp.mask_prob
    )
    chosen = labels != IGNORE_INDEX
    assert chosen.any() and (~chosen).any()

    def loss_with(garble: torch.Tensor | None) -> torch.Tensor:
        hook = None
        if garble is not None:
            hook = model.mlm_head.register_forward_hook(
                lambda mod, inp, out: torch.where(garble[..., None], torch.randn_like(out) * 50, out)
            )
        torch.manual_seed(3)  # the same masking as above
        loss = model.masked_token_loss(text, refs)
        if hook is not None:
            hook.remove()
        return loss

    base = loss_with(None)
    torch.testing.assert_close(loss_with(~chosen), base, atol=0, rtol=0)
    assert not torch.allclose(loss_with(chosen), base)
    tokens = model.text_out(text).tokens
    logits = model.mlm_head(model.cross_former(tokens, refs))
    zeroed = model.mlm_head(model.cross_former(tokens, torch.zeros_like(refs)))
    assert not torch.allclose(logits, zeroed, atol=1e-4)


def test_5_fuse_loss_vanishes_for_exact_cluster_means_as_tau_falls() -> None:
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(6, 32, generator=g), dim=-1) * 4
    y = torch.arange(6).repeat_interleave(10)
    points = centres[y] + 0.3 * torch.randn(60, 32, generator=g)
    means = torch.stack([points[y == c].mean(0) for c in range(6)])
    refs = torch.nn.Parameter(means.clone())
    losses = [reference_nce(points.detach(), refs, y, tau).item() for tau in (0.5, 0.1, 0.02, 0.005)]
    assert all(a >= b for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[0] > 0.1 and losses[-1] < 1e-6, losses


# -- switches -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switches", "terms"),
    [
        ({}, {"sdm", "fuse", "lr", "rgrl"}),
        ({"use_fuse": False}, {"sdm", "lr", "rgrl"}),
        ({"use_lr": False}, {"sdm", "fuse", "rgrl"}),
        ({"use_rgrl": False, "rgrl_kl": True}, {"sdm", "fuse", "lr", "rgrl_kl"}),
        ({"align_loss": "infonce", "use_fuse": False, "use_lr": False}, {"itc", "rgrl"}),
    ],
)
def test_module_switches(root: Path, switches: dict[str, Any], terms: set[str]) -> None:
    model, dm = built(root, **switches)
    out = model.losses(first_batch(dm))
    assert set(out) == terms and all(torch.isfinite(v) for v in out.values())
    assert hasattr(model, "lr_block") == ("lr" in terms) and hasattr(model, "mlm_head") == ("lr" in terms)
    assert model.references.requires_grad == bool({"fuse", "lr"} & terms)
    assert model.classifier is None and not hasattr(model, "cross_attn")  # IRRA's ID and IRR are not MMRef's
    sum(out.values()).backward()


def test_refinement_switches(root: Path) -> None:
    off, dm = built(root, refine=False)
    assert off.rerank_k is None
    q, _ = encoded(off.eval(), dm)
    assert not q.aux
    on, _ = built(root, rerank_k=7, lam=0.25, n_ref_tokens=2)
    assert on.rerank_k == 7 and on.lam == 0.25 and on.reference_tokens(torch.tensor([0, 1])).shape[1] == 2
    for bad in ({"ref_space": "l2"}, {"align_loss": "triplet"}, {"ref_init": "zeros"}, {"rerank_k": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MMRef(**bad)


def test_pooled_queries_recompute_r_from_the_pooled_text_vector() -> None:
    model, q, _ = random_features()
    groups = torch.arange(len(q)) % 3
    pooled, labels = model.pool_queries(q, groups)
    assert labels.tolist() == [0, 1, 2]
    expected = model.reference_vector(pooled.glob).to(torch.bfloat16)
    assert torch.equal(pooled.aux["ref"], expected)
    mean_of_r = torch.stack([q.aux["ref"][groups == c].float().mean(0) for c in range(3)])
    mean_of_r = F.normalize(mean_of_r, dim=-1)
    assert not torch.allclose(pooled.aux["ref"].float(), mean_of_r, atol=1e-2)


def test_references_never_decay_and_paper_lr_groups(root: Path, tmp_path: Path) -> None:
    for model, _ in (built(root), built(root, optim=OptimConfig(no_decay=("bias",)))):
        assert group_of(model)["weight_decay"] == 0.0
    clip_dir = save_tiny_clip(tmp_path / "clip")
    paper, dm = built(root, profile="paper", clip_path=str(clip_dir), image={"size": (32, 16)})
    assert paper.mask_id == 511 and paper.mlm_head.fc.out_features == 514 and paper.references.shape[1] == 16
    groups = {(g["lr"], g["weight_decay"]) for g in param_groups(paper, paper.optim_cfg)}
    assert {g[0] for g in groups} == {1e-5, 2e-5, 5e-5} and paper.optim_cfg.name == "adam"
    assert (group_of(paper)["lr"], group_of(paper)["weight_decay"]) == (5e-5, 0.0)
    assert torch.allclose(paper.references.norm(dim=-1), torch.ones(len(paper.references)))
    terms = paper.losses(first_batch(dm))
    sum(terms.values()).backward()
    assert paper.references.grad is not None and paper.image_tower.proj.weight.grad is not None


# -- shared checks (docs/methods.md §0) ----------------------------------------------------------------------


def test_reference_features_and_training_heads(root: Path) -> None:  # the shared checks: test_contract.py
    model, dm = built(root)
    q, g = encoded(model.eval(), dm)
    assert q.aux["ref"].shape == (len(q), dm.num_classes)
    for name in MMRef.LR_HEAD:  # training-only: deleting them leaves encoding bit-identical
        delattr(model, name)
    q2, g2 = encoded(model, dm)
    assert torch.equal(q.glob, q2.glob) and torch.equal(g.aux["ref"], g2.aux["ref"])


# -- fit + test through the CLI ----------------------------------------------------------------------------


def cli_run(tmp_path: Path, data: list[str], *extra: str) -> dict[str, Any]:
    rec, args = config_fit(tmp_path, "mmref", data, "--data.batch_size", "4", *extra, profile="tiny")
    assert rec["provenance_note"] == "re-implementation from the paper's description"
    assert rec["global_step"] == 2 and rec["details"]["rerank_k"] == 50 and rec["details"]["rerank_s"] >= 0
    return {**rec, "args": args}


synth = synth_args  # test_tune_rerank.py builds its runs with it


def test_cli_fit_then_test_from_the_checkpoint_on_synth_person(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, synth(root, "synth-person"))
    assert rec["details"]["protocol"] == "person_t2i" and {"R1", "mAP", "mINP"} <= set(rec["metrics"])
    ckpt = Path(rec["run_dir"]) / "checkpoints" / "last.ckpt"
    assert main(["test", *rec["args"][1:], "--ckpt_path", str(ckpt)]) == 0
    (path,) = (tmp_path / "runs" / "synth-person" / "mmref" / "tiny").glob("seed*/result.json")
    # a fresh model loads R from the checkpoint and scores the same (the run's result.json, confirmed)
    assert json.loads(path.read_text())["metrics"] == pytest.approx(rec["metrics"])
    # test-time switches are not in the checkpoint's hyper-parameters: the test command's own apply, and the
    # result is filed beside the run's as a variant named from the change
    plain = [*rec["args"][1:], "--model.init_args.refine", "false", "--ckpt_path", str(ckpt)]
    assert main(["test", *plain]) == 0
    details = json.loads((path.parent / "result.refine=false.json").read_text())["details"]
    assert details["rerank_k"] is None and "rerank_s" not in details


def test_cli_fit_on_synth_scenes(root: Path, tmp_path: Path) -> None:
    rec = cli_run(tmp_path, synth(root, "synth-scenes"))
    assert rec["details"]["protocol"] == "f30k_1k" and {"t2i_R1", "i2t_R1", "rsum"} <= set(rec["metrics"])


def test_cli_fit_on_rstpreid_fixture(tmp_path: Path) -> None:
    write_rstpreid(tmp_path / "data", n_train=4)
    data = ["--config", str(CONFIG / "data" / "rstpreid.yaml"), "--data.root", str(tmp_path / "data")]
    rec = cli_run(tmp_path, data)
    assert rec["dataset"] == "rstpreid" and rec["details"]["protocol"] == "person_t2i"


def test_cli_fit_on_cub_fixture_with_class_mean_queries(tmp_path: Path) -> None:
    write_cub(tmp_path / "data")
    data = ["--config", str(CONFIG / "data" / "cub.yaml"), "--data.root", str(tmp_path / "data")]
    rec = cli_run(tmp_path, data)
    assert rec["details"]["protocol"] == "class_reed" and {"AP50", "top1"} <= set(rec["metrics"])


def test_cli_fit_on_flickr30k_fixture(tmp_path: Path) -> None:
    write_f30k_images(tmp_path / "data")
    data = ["--config", str(CONFIG / "data" / "f30k.yaml"), "--data.root", str(tmp_path / "data")]
    rec = cli_run(tmp_path, data)
    assert rec["details"]["protocol"] == "f30k_1k" and "rsum" in rec["metrics"]


@pytest.mark.parametrize("name", ["rstpreid", "cuhk-pedes", "icfg-pedes", "cub", "flowers"])
def test_experiment_configs_merge_after_the_paper_profile(name: str) -> None:
    cfg = paper_config("mmref", name)
    assert cfg["data"]["init_args"]["batch_size"] == 64 and cfg["trainer"]["max_epochs"] == 60
    assert cfg["model"]["init_args"]["profile"] == "paper"
    size = (cfg["model"]["init_args"].get("overrides") or {}).get("image", {}).get("size")
    assert size == ([224, 224] if name in ("cub", "flowers") else None)


@pytest.mark.slow
def test_tiny_profile_learns_synth_scenes(tmp_path: Path) -> None:
    assert_learns(MMRef(), "synth-scenes", tmp_path)
