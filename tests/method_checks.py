"""The unit tests every method gets (docs/methods.md §0), as reusable assertions.

- blockwise `score` equals the full matrix for several block sizes, and `score_pairs` its diagonal entries;
- re-ranking every gallery item with the method's own scorer reproduces `score`'s ranking;
- padding a token set (extra positions with mask False) changes no score;
- eval-mode encoding is deterministic and independent of the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fgbench.evaluation import EvalSpec, FunctionSource, evaluate
from fgbench.features import Features
from fgbench.method import RetrievalMethod


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
) -> None:
    """Encoding the same items in one batch or in several gives the same features (eval mode), twice."""
    a = Features.cat([encode(b) for b in batches_whole])
    b = Features.cat([encode(b) for b in batches_split])
    again = Features.cat([encode(b) for b in batches_whole])
    for name, t in a.tensors().items():
        torch.testing.assert_close(b.tensors()[name], t, atol=atol, rtol=1e-5)
        torch.testing.assert_close(again.tensors()[name], t, atol=0, rtol=0)


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

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Record()],
        default_root_dir=root,
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
    model.build(dm)
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
