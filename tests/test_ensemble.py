"""Evaluator-level ensembles (src/fgbench/ensemble.py; docs/methods.md §2, TERAN's ensemble rows): an ensemble
of one member scores as that member, of several as the weighted mean of their score matrices (also across
methods with different features and tokenizers), the shared checks of docs/methods.md §0, safe loading and the
class lookup of members, and a test run through the CLI on checkpoints of a CLI-trained run."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from method_checks import (
    SYNTH_SIZES,
    assert_block_invariant,
    assert_rerank_all_equals_score,
    attach,
    synth_dm,
)
from method_checks import encoded as split_features

from fgbench.cli import main
from fgbench.data.module import RetrievalDataModule
from fgbench.ensemble import Ensemble, pack, unpack
from fgbench.features import Features
from fgbench.method import RetrievalMethod
from methods.teran import TERAN
from methods.vsepp import VSEPP

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def scenes_dm(root: Path) -> RetrievalDataModule:
    return synth_dm(root, "synth-scenes", batch_size=8)


def saved(model: RetrievalMethod, dm: RetrievalDataModule, path: Path, seed: int) -> RetrievalMethod:
    """A member built on `dm` with seed `seed`, saved as a Lightning checkpoint holds it (weights and
    hyper-parameters); the CLI test below uses a real checkpoint of a trained run."""
    L.seed_everything(seed)
    attach(model, dm)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return model.eval()


@pytest.fixture(scope="module")
def members(root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RetrievalMethod, Path]]:
    """Members: TERAN MrSw, TERAN symm (12-word captions: another tokenizer) and VSE++."""
    folder = tmp_path_factory.mktemp("members")
    made = {
        "mrsw": TERAN(),
        "symm": TERAN(alignment_mode="symm", max_len=12),
        "vsepp": VSEPP(),
    }
    return {
        name: (saved(model, scenes_dm(root), folder / f"{name}.ckpt", seed), folder / f"{name}.ckpt")
        for seed, (name, model) in enumerate(made.items())
    }


def encoded(model: RetrievalMethod, dm: RetrievalDataModule) -> tuple[Features, Features]:
    """Test-split features, encoded with the model's own processor attached."""
    dm.set_processor(model.processor)
    return split_features(model, dm)


def member_scores(
    members: dict[str, tuple[RetrievalMethod, Path]], names: list[str], dm: RetrievalDataModule
):
    out = []
    for name in names:
        model = members[name][0]
        with torch.no_grad():
            out.append(model.score(*encoded(model, dm)))
    return out


def ensemble(
    members: dict[str, tuple[RetrievalMethod, Path]], names: list[str], dm: RetrievalDataModule, **kw: Any
):
    classes = [type(members[n][0]).name for n in names]
    ens = Ensemble(members=[str(members[n][1]) for n in names], classes=classes, **kw)
    return attach(ens, dm).eval()


def test_ensemble_of_one_scores_as_its_member(root: Path, members: dict) -> None:
    dm = scenes_dm(root)
    ens = ensemble(members, ["mrsw"], dm)
    (want,) = member_scores(members, ["mrsw"], dm)
    torch.testing.assert_close(ens.score(*encoded(ens, dm)), want, atol=0, rtol=0)
    assert ens.trains is False and type(ens.members[0]) is TERAN


@pytest.mark.parametrize(
    ("names", "weights"),
    [(["mrsw", "symm"], None), (["mrsw", "symm"], [1.0, 3.0]), (["symm", "vsepp"], None)],
)
def test_ensemble_is_the_weighted_mean_of_its_members(
    root: Path, members: dict, names: list[str], weights: list[float] | None
) -> None:
    dm = scenes_dm(root)
    ens = ensemble(members, names, dm, weights=weights)
    w = weights or [1.0] * len(names)
    scores = member_scores(members, names, dm)
    want = sum(wi * s for wi, s in zip(w, scores, strict=True)) / sum(w)
    q, g = encoded(ens, dm)
    torch.testing.assert_close(ens.score(q, g), want)
    assert_block_invariant(ens, q, g)
    assert_rerank_all_equals_score(ens, q, g, torch.arange(len(q)) // 5)
    # symm's 12-word tokenizer differs from the others: re-tokenised unless it is the first member
    assert ens._retokenize == [i > 0 and "symm" in (n, names[0]) for i, n in enumerate(names)]


def test_pack_unpack_and_pooled_queries(root: Path, members: dict) -> None:
    dm = scenes_dm(root)
    ens = ensemble(members, ["vsepp", "mrsw"], dm)
    q, _ = encoded(ens, dm)
    vq = unpack(q, 0)
    assert vq.tok is None and vq.glob is not None and unpack(q, 1).tok is not None
    again = pack([unpack(q, 0), unpack(q, 1)])
    assert again.aux.keys() == q.aux.keys()
    groups = torch.arange(len(q)) // 5
    pooled, labels = ens.pool_queries(q, groups)
    want, want_labels = members["vsepp"][0].pool_queries(vq, groups)
    torch.testing.assert_close(unpack(pooled, 0).glob, want.glob)
    assert torch.equal(labels, want_labels)


def test_members_on_raw_images_must_share_the_image_transform(
    root: Path, members: dict, tmp_path: Path
) -> None:
    dm = scenes_dm(root)
    big = saved(TERAN(image={"size": (64, 64)}), dm, tmp_path / "big.ckpt", 0)
    assert big.processor.image_size == (64, 64)
    ens = Ensemble(members=[str(members["mrsw"][1]), str(tmp_path / "big.ckpt")], classes=["teran", "teran"])
    with pytest.raises(ValueError, match="share the image transform"):
        ens.build(scenes_dm(root).info())


def test_unsafe_checkpoints_and_unknown_classes_are_refused(
    root: Path, members: dict, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": argparse.Namespace(a=1)}}, evil)
    with pytest.raises(ValueError, match="holds objects fgbench does not load .*never unpickles"):
        Ensemble(members=[str(evil)], classes=["teran"]).build(scenes_dm(root).info())
    with pytest.raises(ValueError, match="pass `classes`"):  # no `_class_path`, no config.yaml
        Ensemble(members=[str(members["mrsw"][1])]).build(scenes_dm(root).info())
    run = tmp_path / "run"  # the run layout: <run>/config.yaml and <run>/checkpoints/last.ckpt
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(members["mrsw"][1], run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"class_path": "methods.teran.TERAN"}}))
    ens = attach(Ensemble(members=[str(run / "checkpoints" / "last.ckpt")]), scenes_dm(root))
    assert type(ens.members[0]) is TERAN
    for kw, message in [
        ({"members": []}, "empty"),
        ({"members": ["a", "b"], "weights": [1.0]}, "1 weights for 2 members"),
        ({"members": ["a"], "weights": [0.0]}, "positive sum"),
    ]:
        with pytest.raises(ValueError, match=message):
            Ensemble(**kw)


def test_test_run_through_the_cli_on_a_cli_trained_checkpoint(root: Path, tmp_path: Path) -> None:
    data = [
        "--config", str(CONFIGS / "data" / "synth-scenes.yaml"),
        "--data.root", str(root),
        "--data.sizes", json.dumps(SYNTH_SIZES["synth-scenes"]),
        "--data.batch_size", "4",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--run.root", str(tmp_path / "runs"),
    ]  # fmt: skip
    fit = ["fit", "--config", str(CONFIGS / "method" / "teran.yaml"), *data, "--trainer.max_steps", "2"]
    assert main(fit) == 0
    (member_dir,) = (tmp_path / "runs" / "synth-scenes" / "teran" / "tiny").glob("seed0-*")
    ckpt = member_dir / "checkpoints" / "last.ckpt"
    assert (
        main(
            ["test", *data, "--model", "fgbench.ensemble.Ensemble", "--model.init_args.members", f"[{ckpt}]"]
        )
        == 0
    )
    (result,) = (tmp_path / "runs" / "synth-scenes" / "ensemble" / "tiny").glob("seed0-*/result.json")
    rec, member = json.loads(result.read_text()), json.loads((member_dir / "result.json").read_text())
    assert rec["method"] == "ensemble" and rec["details"]["ensemble"]["methods"] == ["teran"]
    assert rec["details"]["ensemble"]["members"] == [str(ckpt)] and rec["metrics"] == member["metrics"]
