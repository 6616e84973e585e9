"""The pairwise base (fgbench.pairwise): its chunk loops equal one whole computation for any budget, and its
re-rank switch serves the fine or the coarse score as `rerank_k` says (docs/methods.md §0)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from fgbench.features import Features
from fgbench.losses.contrastive import diagonal_cross_entropy
from fgbench.pairwise import PairwiseMethod, chunk_grid, chunked_matrix, chunked_pairs


@pytest.mark.parametrize("budget", [1, 5, 17, 64, 10_000])
@pytest.mark.parametrize(("n_q", "n_g"), [(7, 5), (1, 9), (0, 4), (6, 0)])
def test_chunk_loops_equal_the_whole_computation(n_q: int, n_g: int, budget: int) -> None:
    gen = torch.Generator().manual_seed(n_q * 31 + n_g)
    a, b = torch.randn(n_q, 3, generator=gen), torch.randn(n_g, 3, generator=gen)
    per_pair = 4
    seen: list[tuple[int, int]] = []

    def block(rows: slice, cols: slice) -> Tensor:
        r, c = len(range(*rows.indices(n_q))), len(range(*cols.indices(n_g)))
        seen.append((r, c))
        return a[rows] @ b[cols].T

    torch.testing.assert_close(chunked_matrix(block, n_q, n_g, per_pair, budget, "cpu"), a @ b.T)
    rows, cols = chunk_grid(n_q, n_g, per_pair, budget)
    assert rows >= 1 and cols >= 1 and (rows * cols * per_pair <= budget or rows == cols == 1)
    assert all(r * c * per_pair <= max(budget, per_pair) for r, c in seen)
    n = min(n_q, n_g)
    pairs = chunked_pairs(lambda sl: (a[:n][sl] * b[:n][sl]).sum(-1), n, per_pair, budget, "cpu")
    torch.testing.assert_close(pairs, (a[:n] * b[:n]).sum(-1))


class _Pairs(PairwiseMethod):
    """Fine score: the negative distance of token means; coarse: the globals' dot product."""

    tasks = frozenset({"text-image"})

    def fine_scores(self, q: Features, g: Features) -> Tensor:
        assert q.tok is not None and g.tok is not None
        return -torch.cdist(q.tok.float().mean(1), g.tok.float().mean(1))

    def fine_pairs(self, q: Features, g: Features) -> Tensor:
        assert q.tok is not None and g.tok is not None
        return -(q.tok.float().mean(1) - g.tok.float().mean(1)).norm(dim=-1)


def _features(n: int, seed: int) -> Features:
    gen = torch.Generator().manual_seed(seed)
    tok = torch.randn(n, 3, 4, generator=gen)
    return Features(index=torch.arange(n), glob=torch.randn(n, 4, generator=gen), tok=tok)


def test_the_rerank_switch_serves_fine_or_coarse_scores() -> None:
    q, g = _features(5, 0), _features(6, 1)
    fine = _Pairs(store_dtype="float32")
    torch.testing.assert_close(fine.score(q, g), fine.fine_scores(q, g))
    shortlisted = _Pairs(store_dtype="float32", rerank_k=3)
    torch.testing.assert_close(shortlisted.score(q, g), q.glob @ g.glob.T)  # the shortlist's coarse score
    n = 5
    qa, ga = q.take(torch.arange(n)), g.take(torch.arange(n))
    torch.testing.assert_close(shortlisted.score_pairs(qa, ga), (qa.glob * ga.glob).sum(-1))
    for model in (fine, shortlisted):  # the re-ranker is always the fine score
        torch.testing.assert_close(model.rescore_pairs(qa, ga), fine.fine_pairs(qa, ga))
        torch.testing.assert_close(model.rescore_pairs(qa, ga), model.fine_scores(qa, ga).diagonal())


def test_storage_dtype_and_fixed_slots() -> None:
    model = _Pairs(store_dtype="bfloat16")
    assert model.stored(torch.ones(2, 3)).dtype == torch.bfloat16
    tok, mask = model.fixed_slots(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), 5)
    assert tok.shape == (2, 5, 4) and mask.tolist() == [[True] * 3 + [False] * 2] * 2
    assert tok[:, 3:].eq(0).all()
    with pytest.raises(ValueError, match="4 regions in a batch; raise max_regions"):
        model.fixed_slots(torch.ones(2, 4, 4), torch.ones(2, 4, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="store_dtype 'int8'"):
        _Pairs(store_dtype="int8")


def test_diagonal_cross_entropy_leaves_excluded_columns_out() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 4, generator=gen)
    exclude = torch.zeros(4, 4, dtype=torch.bool)
    exclude[0, 2] = exclude[3, 1] = True
    kept = [~exclude[i] for i in range(4)]  # row i's softmax over its kept columns; the diagonal is one
    want = torch.stack([-torch.log_softmax(logits[i][k], 0)[int(k[:i].sum())] for i, k in enumerate(kept)])
    want = want.mean()
    torch.testing.assert_close(diagonal_cross_entropy(logits, exclude), want)
    plain = -torch.log_softmax(logits, 1).diagonal().mean()
    torch.testing.assert_close(diagonal_cross_entropy(logits), plain)
