"""The unit tests every method gets (docs/methods.md §0), as reusable assertions.

- blockwise `score` equals the full matrix for several block sizes, and `score_pairs` its diagonal entries;
- re-ranking every gallery item with the method's own scorer reproduces `score`'s ranking;
- padding a token set (extra positions with mask False) changes no score;
- eval-mode encoding is deterministic and independent of the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fgbench.evaluation import EvalSpec, FunctionSource, evaluate, get_protocol
from fgbench.features import Features
from fgbench.method import RetrievalMethod

LOW_PRECISION = (torch.bfloat16, torch.float16)
# the sizes of every tiny random transformers model the tests save (CLIP towers, BERT)
TINY_TRANSFORMER = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


def blockwise(method: RetrievalMethod, q: Features, g: Features, b: int) -> torch.Tensor:
    rows = []
    for i in range(0, len(q), b):
        qi = q.slice(i, i + b)
        rows.append(torch.cat([method.score(qi, g.slice(j, j + b)) for j in range(0, len(g), b)], dim=1))
    return torch.cat(rows, dim=0)


@torch.no_grad()
def assert_block_invariant(
    method: RetrievalMethod, q: Features, g: Features, sizes: Sequence[int] = (1, 3, 7), atol: float = 1e-5
) -> None:
    full = method.score(q, g)
    assert full.shape == (len(q), len(g))
    for b in sizes:
        torch.testing.assert_close(blockwise(method, q, g, b), full, atol=atol, rtol=1e-5)
    n = min(len(q), len(g))
    idx = torch.arange(n)
    pairs = method.score_pairs(q.take(idx), g.take(idx.flip(0)))
    torch.testing.assert_close(pairs, full[idx, idx.flip(0)], atol=atol, rtol=1e-5)


@torch.no_grad()
def assert_rerank_all_equals_score(
    method: RetrievalMethod, q: Features, g: Features, labels: torch.Tensor
) -> None:
    """Re-scoring all items with `score_pairs` gives the same metrics as exact scoring (person_t2i)."""
    spec = EvalSpec("person_t2i", labels, torch.arange(len(g)))
    src = FunctionSource(
        lambda r, c: method.score(q.take(r), g.take(c)),
        len(q),
        len(g),
        pair_fn=lambda r, c: method.score_pairs(q.take(r.flatten()), g.take(c.flatten())).view(r.shape),
    )
    exact = evaluate(src, spec).metrics
    assert evaluate(src, spec, rerank_k=len(g)).metrics == exact


def pad_tokens(f: Features, extra: int, generator: torch.Generator | None = None) -> Features:
    """Append `extra` garbage token positions with mask False."""
    assert f.tok is not None and f.mask is not None
    n, _, e = f.tok.shape
    junk = torch.randn(n, extra, e, generator=generator).to(f.tok)
    return Features(
        index=f.index,
        glob=f.glob,
        tok=torch.cat([f.tok, junk], 1),
        mask=torch.cat([f.mask, torch.zeros(n, extra, dtype=torch.bool)], 1),
        aux=dict(f.aux),
    )


@torch.no_grad()
def assert_padding_invariant(method: RetrievalMethod, q: Features, g: Features, atol: float = 1e-5) -> None:
    full = method.score(q, g)
    gen = torch.Generator().manual_seed(0)
    if q.tok is not None and q.mask is not None:
        torch.testing.assert_close(method.score(pad_tokens(q, 3, gen), g), full, atol=atol, rtol=1e-5)
    if g.tok is not None and g.mask is not None:
        torch.testing.assert_close(method.score(q, pad_tokens(g, 3, gen)), full, atol=atol, rtol=1e-5)


@torch.no_grad()
def assert_encoding_batch_independent(
    encode: Callable[[Any], Features],
    batches_whole: Sequence[Any],
    batches_split: Sequence[Any],
    atol: float = 1e-5,
    low_atol: float | None = None,
) -> None:
    """Encoding the same items in one batch or in several gives the same features (eval mode), twice.

    `low_atol` (when given) is the tolerance of bf16/fp16 tensors (a method's token storage): one rounding
    step of a value that batch-size dependent kernels computed a little differently."""
    a = Features.cat([encode(b) for b in batches_whole])
    b = Features.cat([encode(b) for b in batches_split])
    again = Features.cat([encode(b) for b in batches_whole])
    for name, t in a.tensors().items():
        tol = low_atol if low_atol is not None and t.dtype in LOW_PRECISION else atol
        torch.testing.assert_close(b.tensors()[name], t, atol=tol, rtol=1e-5)
        torch.testing.assert_close(again.tensors()[name], t, atol=0, rtol=0)


def cpu_trainer(root: Any, **kwargs: Any) -> Any:
    """A quiet CPU Trainer for tests (no logger, checkpoints, progress bar or model summary); `kwargs` set
    the run's length and anything else a test needs."""
    import lightning as L

    quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(accelerator="cpu", default_root_dir=root, enable_model_summary=False, **quiet, **kwargs)


def fit_and_test(
    model: RetrievalMethod, dm: Any, root: Any, epochs: int = 8
) -> tuple[list[float], dict[str, float]]:
    """Train on CPU with a plain Trainer (no logger, no validation passes), then test.

    Returns the training loss of every step and the test metrics (the smoke tests of docs/methods.md: the loss
    falls over the run and the test R@1 beats chance).
    """
    import lightning as L

    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            losses.append(float(trainer.callback_metrics["train/loss"]))

    trainer = cpu_trainer(
        root, max_epochs=epochs, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Record()]
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    return losses, model.last_result["test"].metrics


def loss_fell(losses: Sequence[float], epochs: int, ratio: float = 0.7) -> bool:
    """The mean loss of the last epoch is below `ratio` times that of the first."""
    n = len(losses) // epochs
    return sum(losses[-n:]) < ratio * sum(losses[:n])


def attach(model: RetrievalMethod, dm: Any) -> RetrievalMethod:
    """Build the model on the data and attach its processor, as `RetrievalMethod.setup` does."""
    model.build(dm.info())
    dm.set_processor(model.processor)
    return model


def first_batch(dm: Any) -> Any:
    """The first training batch of a DataModule (its processor attached)."""
    return next(iter(dm.train_dataloader()))


def cli_fit(runs: Any, method: str, args: Sequence[str], steps: int = 2) -> tuple[dict[str, Any], list[str]]:
    """`python -m fgbench fit` of a short CPU run through the CLI: `args` (model, data, options), then
    `steps` optimiser steps in one epoch without a progress bar, runs under `runs`. It must exit 0; returns
    the one result.json of `method` (seed 0, tiny profile) and the full argument list (to re-run `test`)."""
    import json
    from pathlib import Path

    from fgbench.cli import main

    full = [
        "fit",
        *args,
        "--trainer.max_steps", str(steps),
        "--trainer.max_epochs", "1",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--run.root", str(runs),
    ]  # fmt: skip
    assert main(full) == 0
    (result,) = Path(runs).glob(f"*/{method}/tiny/seed0-*/result.json")
    return json.loads(result.read_text()), full


# -- the tiny synthetic datamodules and what every method's shared checks read -------------------------------

SYNTH_SIZES: dict[str, dict[str, int]] = {
    "synth-person": {"train_ids": 4, "val_ids": 2, "test_ids": 2, "images_per_id": 2},
    "synth-scenes": {"train_images": 6, "val_images": 3, "test_images": 3},
    "synth-cir": {"train_sets": 4, "val_sets": 3, "test1_sets": 1, "queries_per_set": 2},
}


def synth_dm(root: Any, name: str, **kw: Any) -> Any:
    """The registered synthetic DataModule `name` at its tiny sizes under `root` (else its default sizes)."""
    from fgbench.registry import DATAMODULES

    return DATAMODULES.get(name)(root=str(root), sizes=SYNTH_SIZES.get(name, {}), **kw)


def tiny_datamodule(root: Any, name: str, **kw: Any) -> Any:
    """`synth_dm` with batch 4 and eval batch 8 (unless given), set up for fit."""
    dm = synth_dm(root, name, **{"batch_size": 4, "eval_batch_size": 8, **kw})
    dm.setup("fit")
    return dm


def eval_batches(dm: Any, size: int) -> list[list[Any]]:
    """[query batches, gallery batches] of the test split at eval batch size `size`."""
    dm.eval_batch_size = size
    return [list(loader) for loader in dm.test_dataloader()]


@torch.no_grad()
def encoded(model: RetrievalMethod, dm: Any) -> tuple[Features, Features]:
    """Query and gallery features of the test split."""
    q_loader, g_loader = dm.test_dataloader()
    q = Features.cat([model.encode_queries(b) for b in q_loader])
    g = Features.cat([model.encode_gallery(b) for b in g_loader])
    return q, g


def shared_checks(model: RetrievalMethod, dm: Any) -> tuple[Features, Features]:
    """Every check of docs/methods.md §0 on the test split: batch-independent encoding, block-invariant and
    padding-invariant scores, re-ranking everything equals exact scoring. Returns (queries, gallery)."""
    model.eval()
    whole, split = eval_batches(dm, 64), eval_batches(dm, 3)
    with torch.no_grad():
        q = Features.cat([model.encode_queries(b) for b in whole[0]])
        g = Features.cat([model.encode_gallery(b) for b in whole[1]])
    for i, encode in enumerate((model.encode_queries, model.encode_gallery)):
        assert_encoding_batch_independent(encode, whole[i], split[i], low_atol=8e-3)
    assert_block_invariant(model, q, g)
    assert_padding_invariant(model, q, g)
    assert_rerank_all_equals_score(model, q, g, torch.arange(len(q)) % len(g))
    return q, g


def assert_trains(model: RetrievalMethod, batch: Any) -> dict[str, torch.Tensor]:
    """One training batch: every named loss is a finite scalar and their sum sends a gradient somewhere."""
    model.train()
    model.zero_grad()
    losses = model.losses(batch)
    assert losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()  # type: ignore[union-attr]
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    return losses


@torch.no_grad()
def assert_evaluation_is_the_dense_ranking(
    model: RetrievalMethod, q: Features, g: Features, spec: Any
) -> None:
    """The method's evaluation (column blocks, its re-rank shortlist) gives the metrics of the evaluator on
    the whole score and re-score matrices, computed one query-gallery pair at a time (brute force)."""
    rows = torch.arange(len(q)).repeat_interleave(len(g))
    cols = torch.arange(len(g)).repeat(len(q))
    dense = blockwise(model, q, g, 1)
    redo = model.rescore_pairs(q.take(rows), g.take(cols)).view(len(q), len(g))
    src = FunctionSource(lambda r, c: dense[r][:, c], len(q), len(g), pair_fn=lambda r, c: redo[r, c])
    if get_protocol(spec.protocol).rows_are_images:
        src = src.T
    want = evaluate(src, spec, rerank_k=model.rerank_k).metrics
    got = model.evaluate_features(q, g, spec).metrics
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) < 1e-6, (k, got[k], want[k])


def assert_checkpoint_round_trip(model: RetrievalMethod, dm: Any, path: Any) -> RetrievalMethod:
    """Saved weights (loaded back with weights_only=True) and hyper-parameters rebuild a model on the same
    data that scores the test split exactly as the original."""
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    saved = torch.load(path, weights_only=True)
    again = attach(type(model)(**saved["hyper_parameters"]), dm)
    again.load_state_dict(saved["state_dict"])
    model.eval(), again.eval()
    q, g = encoded(model, dm)
    q2, g2 = encoded(again, dm)
    with torch.no_grad():
        torch.testing.assert_close(again.score(q2, g2), model.score(q, g), atol=0, rtol=0)
    return again


def save_tiny_clip(path: Path) -> Path:
    """A tiny random CLIPModel and a byte-level CLIP tokenizer (no merges) saved like a hub checkpoint."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    CLIPTokenizer(vocab={w: i for i, w in enumerate(vocab)}, merges=[]).save_pretrained(path)
    tower = dict(TINY_TRANSFORMER, num_hidden_layers=1, projection_dim=16)
    text = dict(tower, vocab_size=len(vocab), max_position_embeddings=77, eos_token_id=len(vocab) - 1)
    config = CLIPConfig(
        text_config=text, vision_config=dict(tower, image_size=32, patch_size=8), projection_dim=16
    )
    CLIPModel(config).save_pretrained(path)
    return path


# -- the paper recipes and the official-format fixtures, through the CLI ------------------------------------

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
PRECOMP_SIZES = {"train": 6, "dev": 3, "test": 3}  # images per split of the region-feature fixtures


def paper_config(method: str, dataset: str) -> dict[str, Any]:
    """The config `fit --print_config` resolves for data + method + the paper profile + the pair's
    experiment recipe (experiments/configs), as the sweep's paper cells stack them."""
    import contextlib
    import io

    import yaml

    from experiments.sweep import experiment_config
    from fgbench.cli import main

    files = [CONFIGS / "data" / f"{dataset}.yaml", CONFIGS / "method" / f"{method}.yaml"]
    files += [CONFIGS / "profile" / "paper.yaml", experiment_config(CONFIGS, method, dataset)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["fit", *(a for f in files for a in ("--config", str(f))), "--print_config"])
        except SystemExit as done:
            assert done.code in (0, None)
    return yaml.safe_load(out.getvalue())


def itm_fixtures() -> dict[str, tuple[Callable[[Path], Any], str, list[str]]]:
    """Official-format ITM fixtures: name -> (writer, DataModule prefix in datamodules.itm, data options)."""
    from fixtures import itm as fx

    return {
        "f30k_precomp": (
            lambda r: fx.write_precomp(r, "f30k", PRECOMP_SIZES),
            "Flickr30K",
            ["--data.feature_source", "precomp"],
        ),
        "f30k_butd": (fx.write_f30k_butd, "Flickr30K", ["--data.feature_source", "butd"]),
        "coco_butd": (fx.write_coco_butd, "COCO", ["--data.feature_source", "butd"]),
        "f30k_images": (fx.write_f30k_images, "Flickr30K", []),
    }


ITM_REGIONS = {"f30k_precomp": "precomp", "f30k_butd": "butd", "coco_butd": "butd", "f30k_images": "grid"}


def itm_fixture_run(
    run: Callable[..., dict[str, Any]], tmp_path: Path, name: str, method: str
) -> dict[str, Any]:
    """A 3-step CLI fit + test of a region method on an official-format ITM fixture; its result.json, after
    the checks every such run meets (regions, protocol, five captions per image)."""
    write, module, extra = itm_fixtures()[name]
    write(tmp_path / "data")
    data = ["--data", f"datamodules.itm.{module}DataModule", "--data.root", str(tmp_path / "data"), *extra]
    rec = run(tmp_path, data, steps=3)
    assert rec["global_step"] == 3 and rec["details"][method]["regions"] == ITM_REGIONS[name]
    assert rec["details"]["protocol"] == ("coco_5k" if name.startswith("coco") else "f30k_1k")
    assert rec["details"]["n_gallery"] == rec["details"]["n_query"] * 5 and "rsum" in rec["metrics"]
    return rec


def karpathy_boxes_run(run: Callable[..., dict[str, Any]], tmp_path: Path, method: str) -> dict[str, Any]:
    """A CLI run of a region method on Karpathy images with boxes: RoI regions."""
    from fixtures import itm as fx

    base = fx.write_f30k_images(tmp_path / "data")
    n = len(fx.F30K_SPLITS)
    fx.write_boxes(base, range(n), [fx.image_size(i) for i in range(n)])
    data = ["--data", "datamodules.itm.Flickr30KDataModule", "--data.root", str(tmp_path / "data")]
    rec = run(tmp_path, [*data, "--data.with_boxes", "true"])
    assert rec["details"][method]["regions"] == "roi" and rec["details"]["boxes"] is True
    return rec


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "image", "caption", "a", "dog"]


def save_tiny_bert(path: Path) -> Path:
    """A tiny random 6-layer BertModel and a word-piece tokenizer saved like a hub checkpoint."""
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = [*BERT_VOCAB, *(str(i) for i in range(20))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab), num_hidden_layers=6, max_position_embeddings=128, **TINY_TRANSFORMER
    )
    BertModel(config).save_pretrained(path)
    return path


def rstpreid_args(
    data: Path, runs: Path, *extra: str, model: str = "test_method_base.TinyDual", epochs: int = 1
) -> list[str]:
    """The options of a CPU `fgbench fit`/`test` of `model` on an RSTPReid-format fixture at `data`, runs
    under `runs` (no progress bar); `extra` come last."""
    return [
        "--data", "datamodules.person.RSTPReidDataModule",
        "--data.root", str(data),
        "--model", model,
        "--trainer.max_epochs", str(epochs),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--run.root", str(runs),
        *extra,
    ]  # fmt: skip


def subprocess_env() -> dict[str, str]:
    """The environment of a `python -m fgbench` child that imports the test methods (tests/ on its path)."""
    import os

    root = Path(__file__).resolve().parents[1]
    return dict(os.environ, PYTHONPATH=f"{root / 'tests'}:{root / 'src'}:{root}")


def synth_args(root: Path, name: str) -> list[str]:
    """`--data` options of the registered synthetic dataset `name` at its tiny sizes under `root`."""
    import json

    from fgbench.registry import DATAMODULES

    cls = DATAMODULES.get(name)
    path = f"{cls.__module__}.{cls.__qualname__}"
    return ["--data", path, "--data.root", str(root), "--data.sizes", json.dumps(SYNTH_SIZES[name])]


def config_fit(
    tmp_path: Path, method: str, data: Sequence[str], *extra: str, steps: int = 2, profile: str | None = None
) -> tuple[dict[str, Any], list[str]]:
    """`cli_fit` of `method` from its experiments/configs/method file, runs under `tmp_path/runs`: the method
    config, the data options (model options among them apply to it), a profile file, then `extra`."""
    method_config = ["--config", str(CONFIGS / "method" / f"{method}.yaml")]
    profile_config = ["--config", str(CONFIGS / "profile" / f"{profile}.yaml")] if profile else []
    return cli_fit(tmp_path / "runs", method, [*method_config, *data, *profile_config, *extra], steps)


# moderate synthetic sizes of the slow "the tiny profile learns" tests (a minute or two each on 2 CPU cores)
MODERATE_SIZES: dict[str, dict[str, int]] = {
    "synth-person": {"train_ids": 100, "val_ids": 10, "test_ids": 30, "images_per_id": 2},
    "synth-scenes": {"train_images": 400, "val_images": 20, "test_images": 50},
    "synth-cir": {"train_sets": 500, "val_sets": 60, "test1_sets": 1, "queries_per_set": 2},
}


def moderate_fit(cls: Callable[[], RetrievalMethod], name: str, root: Path) -> tuple[list[float], dict, Any]:
    """Seed 0, build `cls()` and `fit_and_test` it (8 epochs, batch 32) on `name` at MODERATE_SIZES under
    `root`: (the loss of every step, the test metrics, the DataModule)."""
    import lightning as L

    from fgbench.registry import DATAMODULES

    dm = DATAMODULES.get(name)(root=str(root), sizes=MODERATE_SIZES[name], batch_size=32)
    L.seed_everything(0)
    losses, metrics = fit_and_test(cls(), dm, root)
    return losses, metrics, dm


def assert_learns_synth_cir(cls: Callable[[], RetrievalMethod], root: Path) -> None:
    """A composed method's tiny profile on moderate synth-cir: the loss falls, test R@1 >= 3x chance."""
    losses, metrics, dm = moderate_fit(cls, "synth-cir", root)
    assert loss_fell(losses, epochs=8)
    gallery = len(dm.evaluation_set(dm.test_split).gallery)
    assert metrics["R1"] >= 3 * 100.0 / gallery
