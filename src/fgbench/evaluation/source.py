"""Score sources: a score matrix, or a function that scores blocks of queries x gallery items.

Every source answers `scores(rows, cols)` for index tensors in its own index space, so the evaluator can
walk any gallery size in bounded memory, transpose a direction (image-text protocols score both ways),
or restrict to a subset (COCO folds, FashionIQ categories) without copying the matrix. An optional pair
function re-scores arbitrary (query, gallery) index pairs: the top-k re-rank path of docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

BlockFn = Callable[[Tensor, Tensor], Tensor]  # (row idx Long[b], col idx Long[c]) -> Float[b, c]
PairFn = Callable[[Tensor, Tensor], Tensor]  # (row idx Long[b,k], col idx Long[b,k]) -> Float[b, k]


class ScoreSource:
    """Abstract scores of shape [n_rows, n_cols]; rows are the queries of the current direction."""

    n_rows: int
    n_cols: int
    pair_fn: PairFn | None = None

    def scores(self, rows: Tensor, cols: Tensor | None = None) -> Tensor:
        """Float32 scores of rows x cols (all columns when `cols` is None)."""
        raise NotImplementedError

    def pair_scores(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Re-scores of index pairs with the same shape (rows[b,k], cols[b,k]); the re-rank scorer."""
        if self.pair_fn is None:
            raise ValueError("this score source has no pair scorer: re-ranking needs one")
        return self.pair_fn(rows, cols).float()

    @property
    def T(self) -> ScoreSource:
        return Transposed(self)

    def select(self, rows: Tensor, cols: Tensor) -> ScoreSource:
        return Subset(self, rows, cols)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")


class MatrixSource(ScoreSource):
    """A dense score matrix held in memory (CPU or CUDA)."""

    def __init__(self, matrix: Tensor, pair_fn: PairFn | None = None) -> None:
        if matrix.dim() != 2:
            raise ValueError(
                f"scores must be a 2-D [queries, gallery] matrix, got shape {tuple(matrix.shape)}"
            )
        if not torch.is_floating_point(matrix):
            raise ValueError(f"scores must be floating point, got {matrix.dtype}")
        self.matrix = matrix
        self.n_rows, self.n_cols = matrix.shape
        self.pair_fn = pair_fn or self._pairs

    def _pairs(self, rows: Tensor, cols: Tensor) -> Tensor:
        return self.matrix[rows.to(self.matrix.device), cols.to(self.matrix.device)]

    def scores(self, rows: Tensor, cols: Tensor | None = None) -> Tensor:
        block = self.matrix.index_select(0, rows.to(self.matrix.device))
        if cols is not None:
            block = block.index_select(1, cols.to(self.matrix.device))
        return block.float()

    @property
    def T(self) -> ScoreSource:
        pf = self.pair_fn  # a custom pair scorer follows the transpose (the default reads the matrix)
        return MatrixSource(self.matrix.T, None if pf == self._pairs else (lambda r, c: pf(c, r)))

    @property
    def device(self) -> torch.device:
        return self.matrix.device


class FunctionSource(ScoreSource):
    """Scores computed on demand by `fn(rows, cols)`, called on column blocks of at most `col_block`."""

    def __init__(
        self,
        fn: BlockFn,
        n_rows: int,
        n_cols: int,
        col_block: int = 4096,
        pair_fn: PairFn | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.fn, self.n_rows, self.n_cols, self.col_block = fn, int(n_rows), int(n_cols), int(col_block)
        self.pair_fn = pair_fn
        self._device = torch.device(device)

    def scores(self, rows: Tensor, cols: Tensor | None = None) -> Tensor:
        if cols is None:
            cols = torch.arange(self.n_cols, device=rows.device)
        parts = [self.fn(rows, cols[i : i + self.col_block]) for i in range(0, cols.numel(), self.col_block)]
        out = torch.cat(parts, dim=1) if parts else torch.empty(rows.numel(), 0)
        if out.shape != (rows.numel(), cols.numel()):
            raise ValueError(
                f"score function returned shape {tuple(out.shape)} for a block of "
                f"{rows.numel()} x {cols.numel()} (rows x columns)"
            )
        return out.float()

    @property
    def device(self) -> torch.device:
        return self._device


class Transposed(ScoreSource):
    """The same scores with rows and columns swapped (image-text: i2t and t2i of one matrix)."""

    def __init__(self, base: ScoreSource) -> None:
        self.base = base
        self.n_rows, self.n_cols = base.n_cols, base.n_rows
        self.pair_fn = None if base.pair_fn is None else (lambda r, c: base.pair_fn(c, r))  # type: ignore[misc]

    def scores(self, rows: Tensor, cols: Tensor | None = None) -> Tensor:
        if cols is None:
            cols = torch.arange(self.n_cols, device=rows.device)
        return self.base.scores(cols, rows).T

    @property
    def T(self) -> ScoreSource:
        return self.base

    @property
    def device(self) -> torch.device:
        return self.base.device


class Subset(ScoreSource):
    """Rows `row_idx` x columns `col_idx` of a base source, re-indexed from 0."""

    def __init__(self, base: ScoreSource, row_idx: Tensor, col_idx: Tensor) -> None:
        self.base, self.row_idx, self.col_idx = base, row_idx.long(), col_idx.long()
        self.n_rows, self.n_cols = int(row_idx.numel()), int(col_idx.numel())
        if base.pair_fn is not None:
            self.pair_fn = lambda r, c: base.pair_fn(  # type: ignore[misc]
                self.row_idx.to(r.device)[r], self.col_idx.to(c.device)[c]
            )

    def scores(self, rows: Tensor, cols: Tensor | None = None) -> Tensor:
        ri = self.row_idx.to(rows.device)[rows]
        ci = self.col_idx.to(rows.device) if cols is None else self.col_idx.to(cols.device)[cols]
        return self.base.scores(ri, ci)

    @property
    def device(self) -> torch.device:
        return self.base.device


def as_source(scores: Tensor | ScoreSource) -> ScoreSource:
    """Wrap a matrix; pass a source through."""
    return scores if isinstance(scores, ScoreSource) else MatrixSource(scores)
