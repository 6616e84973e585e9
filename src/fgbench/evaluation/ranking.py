"""Exact ranks under docs/protocols.md §0: a stable descending order, ties broken by gallery index.

rank_q(g) = #{j in C_q : s_qj > s_qg} + #{j in C_q : s_qj = s_qg and j < g}, with C_q the gallery minus the
query's excluded item. Computed by counting within one block of queries (two comparisons per item), so the
result never depends on block size, device count or sort algorithm.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD = -1  # padding value of item index tensors


def _count_before(
    scores: Tensor, item_scores: Tensor, items: Tensor, cand_idx: Tensor | None
) -> tuple[Tensor, Tensor]:
    """#competitors ahead of each item (strictly higher score, or equal score at a lower index), and
    #competitors with exactly its score (itself included when it is a competitor).

    scores [b, n] are the competitors' scores, `cand_idx` [b, n] their gallery indices (None = 0..n-1);
    item_scores and items are [b, p].
    """
    s = scores[:, None, :]
    v = item_scores[:, :, None]
    ahead = (s > v).sum(-1, dtype=torch.int32)  # int32: no int64 copy of the comparison
    eq = s == v
    n_eq = eq.sum(-1, dtype=torch.int32)
    if bool((n_eq > 1).any()):  # some item ties with another one: add equal scores at lower indices
        idx = (
            torch.arange(scores.shape[1], device=scores.device) if cand_idx is None else cand_idx[:, None, :]
        )
        ahead = ahead + (eq & (idx < items[:, :, None])).sum(-1, dtype=torch.int32)
    return ahead, n_eq


def block_ranks(
    scores: Tensor,
    items: Tensor,
    exclude: Tensor | None = None,
    max_elems: int = 1 << 26,
) -> tuple[Tensor, Tensor]:
    """Ranks (0-based) of `items` [b, p] (gallery indices, PAD = none) in each row of `scores` [b, n].

    The excluded item of a row (exclude[b], -1 = none) is removed from the candidates. Returns the ranks
    (PAD items get n) and, per item, the number of other candidates with exactly its score (ties).
    """
    b, n = scores.shape
    p = items.shape[1]
    valid = items >= 0
    safe = items.clamp(min=0)
    item_scores = scores.gather(1, safe)
    ranks = torch.empty(b, p, dtype=torch.long, device=scores.device)
    ties = torch.empty(b, p, dtype=torch.long, device=scores.device)
    step = max(1, max_elems // max(1, b * n))
    for i in range(0, p, step):
        sl = slice(i, i + step)
        ahead, n_eq = _count_before(scores, item_scores[:, sl], safe[:, sl], None)
        ranks[:, sl] = ahead.long()
        ties[:, sl] = n_eq.long() - 1
    if exclude is not None:
        has_ex = exclude >= 0
        ex = exclude.clamp(min=0)
        ex_score = scores.gather(1, ex[:, None])
        ahead = (ex_score > item_scores) | ((ex_score == item_scores) & (ex[:, None] < safe))
        ranks -= (ahead & has_ex[:, None]).long()
        ties -= ((ex_score == item_scores) & has_ex[:, None] & (ex[:, None] != safe)).long()
    ranks = torch.where(valid, ranks, torch.full_like(ranks, n))
    ties = torch.where(valid, ties, torch.zeros_like(ties))
    return ranks, ties


def stable_topk(scores: Tensor, k: int, exclude: Tensor | None = None) -> Tensor:
    """Indices [b, k] of the k best candidates per row, in the §0 order (score desc, index asc)."""
    b, n = scores.shape
    if exclude is not None and bool((exclude >= 0).any()):
        scores = scores.clone()
        rows = torch.nonzero(exclude >= 0).squeeze(1)
        scores[rows, exclude[rows]] = float("-inf")
        n_cand = n - 1  # conservative: a row with no exclusion still has n
    else:
        n_cand = n
    if k > n_cand:
        raise ValueError(f"top-{k} requested but queries have only {n_cand} candidates")
    kth = torch.topk(scores, k, dim=1).values[:, -1:]  # the k-th best score of each row
    above = scores > kth
    at = scores == kth
    need = k - above.sum(1, keepdim=True)  # how many tied-at-threshold items to take, lowest index first
    take = above | (at & (torch.cumsum(at.long(), dim=1) <= need))
    idx = torch.nonzero(take)[:, 1].view(b, k)  # ascending gallery index within each row
    if exclude is not None and bool((idx == exclude[:, None]).any()):
        raise ValueError(f"top-{k} reached an excluded item: fewer than {k} candidates score above -inf")
    order = torch.sort(scores.gather(1, idx), dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


def rerank_ranks(
    coarse_ranks: Tensor, items: Tensor, cand: Tensor, rescores: Tensor
) -> tuple[Tensor, Tensor]:
    """Final ranks after re-scoring the coarse top-k `cand` [b, k] with `rescores` [b, k].

    The k candidates are ranked by re-score (ties by gallery index) ahead of all other items, which keep
    their coarse order: an item outside the top-k keeps its coarse rank, since all k candidates precede it
    in both orders. Returns the final ranks and the ties of in-shortlist items among the re-scores.
    """
    k = cand.shape[1]
    in_short = (coarse_ranks < k) & (items >= 0)
    match = cand[:, None, :] == items[:, :, None]  # [b, p, k]
    pos = match.float().argmax(-1)
    item_re = rescores.gather(1, pos)
    inner, n_eq = _count_before(rescores, item_re, items.clamp(min=0), cand)
    ties = n_eq - 1
    inner, ties = inner.long(), ties.long()
    final = torch.where(in_short, inner, coarse_ranks)
    return final, torch.where(in_short, ties, torch.zeros_like(ties))
