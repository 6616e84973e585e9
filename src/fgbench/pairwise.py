"""Pairwise methods: a score of a query x gallery pair computed from their token (word, region) sets, not as
the dot product of two global vectors (docs/methods.md §0 "Common interface"; the evaluator calls `score`
on blocks and `rerank` on shortlists, docs/architecture.md).

What every such method repeats lives here, once:

`PairwiseMethod(RetrievalMethod)`, the base class:
- `__init__(*, store_dtype: str = "bfloat16", **kwargs)`: `store_dtype` is a key of
  `fgbench.features.STORE_DTYPES` (checked, `ValueError` naming it otherwise); the other keyword arguments go
  to `RetrievalMethod.__init__` (profile, optim, loss_weights, rerank_k, ...). Sets `self.store_dtype`
  (a `torch.dtype`).
- `stored(t) -> Tensor`: `t` in the storage dtype, for the token / region sets `encode_*` return (globals
  stay fp32; the fine scorers compute in fp32).
- `fixed_slots(tok, mask, slots) -> (tok, mask)`: sets of [B, S, e] / Bool[B, S] padded to `slots` masked
  slots (region counts vary between batches; gathering needs one shape); `ValueError` when S > slots,
  asking to raise `max_regions`.
- the re-rank switch. A subclass implements
    `fine_scores(q: Features, g: Features) -> Tensor [n_q, n_g]` and
    `fine_pairs(q: Features, g: Features) -> Tensor [n]` (the same function on aligned pairs q[i], g[i]).
  The base then defines
    `score = fine_scores` and `score_pairs = fine_pairs` when `rerank_k` is None;
    `score = coarse_scores`, `score_pairs = coarse_pairs` (the global dot product of `RetrievalMethod`, the
    shortlist's score) when `rerank_k` is set, and `rescore_pairs = fine_pairs` always (the shortlist's
    re-scorer, called by `RetrievalMethod.rerank`).
  A method whose fine scorer can be switched off returns `coarse_scores` / `coarse_pairs` from its fine
  functions then.

Module functions, the chunk loops under the evaluator's own blocks:
- `chunk_grid(n_q, n_g, per_pair, budget) -> (rows, cols)`: a block of rows x cols pairs whose tensors of
  `per_pair` elements per pair hold at most `budget` elements (at least 1 x 1); columns first.
- `chunked_matrix(fn, n_q, n_g, per_pair, budget, device) -> Tensor [n_q, n_g]`: `fn(rows: slice,
  cols: slice) -> [rows, cols]` over the `chunk_grid` blocks, concatenated (fp32 zeros when empty).
- `chunked_pairs(fn, n, per_pair, budget, device) -> Tensor [n]`: `fn(sl: slice) -> [len]` over slices of
  at most budget // per_pair aligned pairs (at least 1), concatenated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fgbench.features import STORE_DTYPES, Features, pad_slots
from fgbench.method import RetrievalMethod


def chunk_grid(n_q: int, n_g: int, per_pair: int, budget: int) -> tuple[int, int]:
    """(rows, cols) of a chunk of query x gallery pairs holding at most `budget` elements (`per_pair` each;
    at least one pair): as many gallery columns as fit, then as many query rows."""
    per_pair = max(1, per_pair)
    cols = max(1, min(n_g, budget // per_pair))
    rows = max(1, min(n_q, budget // (per_pair * cols)))
    return rows, cols


def chunked_matrix(
    fn: Callable[[slice, slice], Tensor],
    n_q: int,
    n_g: int,
    per_pair: int,
    budget: int,
    device: torch.device | str,
) -> Tensor:
    """[n_q, n_g] from `fn(query rows, gallery cols) -> [rows, cols]` over chunks of `chunk_grid`, so that no
    chunk's tensors exceed `budget` elements (the full [n_q, n_g, ...] tensor is never built)."""
    if n_q == 0 or n_g == 0:
        return torch.zeros(n_q, n_g, dtype=torch.float32, device=device)
    rows, cols = chunk_grid(n_q, n_g, per_pair, budget)
    out = [
        torch.cat([fn(slice(i, i + rows), slice(j, j + cols)) for j in range(0, n_g, cols)], dim=1)
        for i in range(0, n_q, rows)
    ]
    return torch.cat(out, dim=0)


def chunked_pairs(
    fn: Callable[[slice], Tensor], n: int, per_pair: int, budget: int, device: torch.device | str
) -> Tensor:
    """[n] from `fn(pairs) -> [len]` over slices of at most `budget // per_pair` aligned pairs (>= 1)."""
    step = max(1, budget // max(1, per_pair))
    parts = [fn(slice(i, i + step)) for i in range(0, n, step)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32, device=device)


class PairwiseMethod(RetrievalMethod):
    """A method scored by a fine function of token sets, optionally as the re-ranker of the globals'
    shortlist (`rerank_k`); see the module docstring for the API a subclass implements and gets."""

    def __init__(self, *, store_dtype: str = "bfloat16", **kwargs: Any) -> None:
        if store_dtype not in STORE_DTYPES:
            allowed = ", ".join(STORE_DTYPES)
            raise ValueError(f"{self.name}: store_dtype {store_dtype!r} is not one of {allowed}")
        super().__init__(**kwargs)
        self.store_dtype: torch.dtype = STORE_DTYPES[store_dtype]

    # -- to implement ----------------------------------------------------------------------------------------
    def fine_scores(self, q: Features, g: Features) -> Tensor:
        """[n_q, n_g] fine scores of queries x gallery items (exact, block-independent)."""
        raise NotImplementedError

    def fine_pairs(self, q: Features, g: Features) -> Tensor:
        """[n] fine scores of the aligned pairs (q[i], g[i]); the same function as `fine_scores`."""
        raise NotImplementedError

    # -- the coarse score: the globals' dot product ----------------------------------------------------------
    def coarse_scores(self, q: Features, g: Features) -> Tensor:
        return RetrievalMethod.score(self, q, g)

    def coarse_pairs(self, q: Features, g: Features) -> Tensor:
        return RetrievalMethod.score_pairs(self, q, g)

    # -- the re-rank switch ----------------------------------------------------------------------------------
    def score(self, q: Features, g: Features) -> Tensor:
        """The fine scores; with `rerank_k`, the globals' coarse score (the shortlist's)."""
        return self.coarse_scores(q, g) if self.rerank_k is not None else self.fine_scores(q, g)

    def score_pairs(self, q: Features, g: Features) -> Tensor:
        return self.coarse_pairs(q, g) if self.rerank_k is not None else self.fine_pairs(q, g)

    def rescore_pairs(self, q: Features, g: Features) -> Tensor:
        """The fine scores of aligned pairs (the re-rank scorer of the shortlist)."""
        return self.fine_pairs(q, g)

    # -- storage ---------------------------------------------------------------------------------------------
    def stored(self, t: Tensor) -> Tensor:
        """`t` in `store_dtype`, as token / region sets are kept between encoding and scoring."""
        return t.to(self.store_dtype)

    def fixed_slots(self, tok: Tensor, mask: Tensor, slots: int) -> tuple[Tensor, Tensor]:
        """Sets [B, S, e] and masks [B, S] padded to `slots` (region counts vary; gathering needs one
        shape)."""
        if tok.shape[1] > slots:
            n = tok.shape[1]
            raise ValueError(f"{self.name}: {n} regions in a batch; raise max_regions (now {slots})")
        return pad_slots(tok, mask, slots)
