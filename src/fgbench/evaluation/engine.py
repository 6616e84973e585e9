"""The chunked scorer: walks a score source in blocks of queries and keeps only per-query statistics.

Extra memory is bounded by one block (block_rows x n_gallery scores plus the comparison tensors, capped by
`max_elems`) whatever the number of queries. Under DDP, query blocks are shared round-robin across ranks
and the per-query statistics (each filled by exactly one rank, zeros elsewhere) are summed, which is exact:
results equal the single-process ones bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fgbench.evaluation.distributed import all_reduce_sum, world
from fgbench.evaluation.ranking import PAD, block_ranks, rerank_ranks, stable_topk
from fgbench.evaluation.source import ScoreSource

Progress = Callable[[int, int], None]


@dataclass
class Options:
    """How to walk the scores; none of these changes a metric."""

    block_rows: int = 256  # queries per block (shrunk so a block holds at most max_elems scores)
    max_elems: int = 1 << 25  # cap on one block's elements (scores and comparison tensors)
    rerank_k: int | None = None  # re-score each query's coarse top-k with the source's pair scorer
    distributed: bool | None = None  # None: split blocks across ranks when a process group is up
    progress: Progress | None = None  # called with (blocks done, blocks total)
    keep_lists: bool = False  # keep top-k lists and subset orders (CIRR test-server submission)
    one_walk: bool = True  # image-text: score the pair matrix once for both directions (onewalk.py)


@dataclass
class Direction:
    """One retrieval direction: rows of `source` are queries, relevance = equal labels."""

    source: ScoreSource
    row_labels: Tensor | None  # None = no targets (submission only)
    col_labels: Tensor
    exclude: Tensor | None = None  # Long[Q] gallery index removed from a query's candidates, -1 none
    subsets: Tensor | None = None  # Long[Q, M] gallery indices (CIRR Recall_subset)
    topk: int = 0  # keep each query's final top-k list (submission files)
    count_below: tuple[int, ...] = ()  # count positives ranked below each K (precision@K)
    name: str = "t2i"  # for messages

    def validate(self) -> None:
        q, g = self.source.n_rows, self.source.n_cols
        _check_labels(self.col_labels, g, f"{self.name}: gallery labels", "score columns")
        if self.row_labels is not None:
            _check_labels(self.row_labels, q, f"{self.name}: query labels", "score rows")
        if self.exclude is not None:
            _check_index(self.exclude, (q,), g, f"{self.name}: exclude", allow_pad=True)
        if self.subsets is not None:
            if self.subsets.dim() != 2:
                raise ValueError(
                    f"{self.name}: subsets must be [queries, members], got {tuple(self.subsets.shape)}"
                )
            _check_index(self.subsets, (q, self.subsets.shape[1]), g, f"{self.name}: subsets", allow_pad=True)


def _check_labels(labels: Tensor, n: int, what: str, axis: str) -> None:
    if labels.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{what} must be integers, got {labels.dtype}")
    if labels.numel() != n:
        raise ValueError(f"{what} have {labels.numel()} entries but the scores have {n} {axis}")


def _check_index(t: Tensor, shape: tuple[int, ...], n: int, what: str, allow_pad: bool) -> None:
    if t.dtype.is_floating_point:
        raise ValueError(f"{what} must be integer gallery indices, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {tuple(t.shape)}")
    lo = -1 if allow_pad else 0
    bad = (t < lo) | (t >= n)
    if bool(bad.any()):
        first = torch.nonzero(bad)[0].tolist()
        raise ValueError(
            f"{what}: value {int(t[tuple(first)])} at {first} is not a gallery index in [{lo}, {n})"
        )


@dataclass
class Positives:
    """Gallery items of each label, as a CSR over the gallery sorted by label."""

    order: Tensor
    start: Tensor
    count: Tensor

    @classmethod
    def build(cls, row_labels: Tensor, col_labels: Tensor) -> Positives:
        order = torch.argsort(col_labels, stable=True)
        sl = col_labels[order].contiguous()
        rl = row_labels.to(sl.device).contiguous()
        start = torch.searchsorted(sl, rl, right=False)
        end = torch.searchsorted(sl, rl, right=True)
        return cls(order, start, end - start)

    def items(self, rows: Tensor) -> Tensor:
        """[b, P] gallery indices of the rows' positives, PAD-filled."""
        cnt = self.count[rows]
        p = max(1, int(cnt.max()))
        ar = torch.arange(p, device=rows.device)
        pos = (self.start[rows][:, None] + ar).clamp(max=max(0, self.order.numel() - 1))
        items = self.order[pos]
        return torch.where(ar[None, :] < cnt[:, None], items, torch.full_like(items, PAD))


def _no_positive_error(d: Direction, bad: Tensor) -> ValueError:
    first = bad[:10].tolist()
    assert d.row_labels is not None
    labels = d.row_labels[bad[:10]].tolist()
    return ValueError(
        f"{d.name}: {bad.numel()} queries have no relevant gallery item among their candidates "
        f"(first query indices {first}, labels {labels}); every query needs a positive (docs/protocols.md §0)"
    )


def _check_finite(scores: Tensor, rows: Tensor, what: str) -> None:
    nan = torch.isnan(scores)
    if bool(nan.any()):
        r, c = torch.nonzero(nan)[0].tolist()
        raise ValueError(
            f"{what} contain NaN ({int(nan.sum())} in this block; first at query {int(rows[r])}, column {c})"
        )


def direction_stats(d: Direction, opts: Options) -> dict[str, Tensor]:
    """Per-query statistics of one direction: first/last positive rank, AP, ties, subset rank, top-k."""
    pos, exclude, k, stats = prepare(d, opts)
    rank_id, n_ranks = world()
    split = n_ranks > 1 and opts.distributed is not False
    b = block_size(d.source.n_cols, opts)
    starts = list(range(0, d.source.n_rows, b))
    mine = [s for i, s in enumerate(starts) if not split or i % n_ranks == rank_id]
    dev = d.source.device
    for done, s0 in enumerate(mine, 1):
        rows = torch.arange(s0, min(d.source.n_rows, s0 + b), device=dev)
        block(d, opts, pos, exclude, k, rows, stats)
        if opts.progress is not None:
            opts.progress(done, len(mine))
    if split:
        stats = {name: all_reduce_sum(t) for name, t in stats.items()}
    return stats


def block_size(n_cols: int, opts: Options) -> int:
    """Query rows per block: `block_rows`, shrunk so a block holds at most `max_elems` scores."""
    return max(1, min(opts.block_rows, opts.max_elems // max(1, n_cols)))


def prepare(
    d: Direction, opts: Options
) -> tuple[Positives | None, Tensor | None, int | None, dict[str, Tensor]]:
    """Validate a direction; its positives, exclusions, effective re-rank k and zeroed statistics."""
    d.validate()
    q, g = d.source.n_rows, d.source.n_cols
    dev = d.source.device
    exclude = None if d.exclude is None else d.exclude.to(dev).long()
    pos = None
    if d.row_labels is not None:
        pos = Positives.build(d.row_labels.to(dev).long(), d.col_labels.to(dev).long())
        n_pos = pos.count.clone()
        if exclude is not None:
            hit = (exclude >= 0) & (d.col_labels.to(dev)[exclude.clamp(min=0)] == d.row_labels.to(dev))
            n_pos -= hit.long()
        bad = torch.nonzero(n_pos == 0).squeeze(1)
        if bad.numel():
            raise _no_positive_error(d, bad.cpu())

    k = opts.rerank_k
    if k is not None and k > g - (1 if exclude is not None else 0):
        k = g - (1 if exclude is not None else 0)
    stats: dict[str, Tensor] = {}
    if pos is not None:
        stats.update(
            first=torch.zeros(q, dtype=torch.long),
            last=torch.zeros(q, dtype=torch.long),
            n_pos=torch.zeros(q, dtype=torch.long),
            ap=torch.zeros(q, dtype=torch.float64),
            tied=torch.zeros(q, dtype=torch.long),
        )
        for kk in d.count_below:
            stats[f"below{kk}"] = torch.zeros(q, dtype=torch.long)
        if d.subsets is not None:
            stats["sub_rank"] = torch.zeros(q, dtype=torch.long)
    if d.subsets is not None:
        stats["sub_order"] = torch.zeros(q, d.subsets.shape[1], dtype=torch.long)
    if d.topk:
        stats["topk"] = torch.zeros(q, d.topk, dtype=torch.long)

    return pos, exclude, k, stats


def block(
    d: Direction,
    opts: Options,
    pos: Positives | None,
    exclude: Tensor | None,
    k: int | None,
    rows: Tensor,
    stats: dict[str, Tensor],
    scores: Tensor | None = None,
) -> None:
    """Fill the statistics of `rows` (consecutive queries); `scores` = their rows when already computed."""
    if scores is None:
        scores = d.source.scores(rows)
    _check_finite(scores, rows, f"{d.name}: scores")
    ex = None if exclude is None else exclude[rows]
    cand = rescores = None
    if k is not None:
        cand = stable_topk(scores, k, ex)
        rescores = d.source.pair_scores(rows[:, None].expand_as(cand), cand)
        _check_finite(rescores, rows, f"{d.name}: re-rank scores")

    def final_ranks(items: Tensor) -> tuple[Tensor, Tensor]:
        ranks, ties = block_ranks(scores, items, ex, opts.max_elems)
        if cand is not None and rescores is not None:
            ranks, ties = rerank_ranks(ranks, items, cand, rescores)
        return ranks, ties

    sl = slice(int(rows[0]), int(rows[-1]) + 1)
    first = None
    if pos is not None:
        items = pos.items(rows)
        if ex is not None:
            items = torch.where(items == ex[:, None], torch.full_like(items, PAD), items)
        ranks, ties = final_ranks(items)
        valid = items >= 0
        n = valid.sum(1)
        sorted_ranks = torch.sort(ranks, dim=1).values  # PAD items rank n_gallery: sorted last
        kth = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
        prec = kth[None, :] / (sorted_ranks.double() + 1.0)
        ap = (prec * (kth[None, :] <= n[:, None]).double()).sum(1) / n.double()
        first, arg = ranks.min(1)
        last = torch.where(valid, ranks, torch.full_like(ranks, -1)).max(1).values
        stats["first"][sl] = first.cpu()
        stats["last"][sl] = last.cpu()
        stats["n_pos"][sl] = n.cpu()
        stats["ap"][sl] = ap.cpu()
        stats["tied"][sl] = (ties.gather(1, arg[:, None]).squeeze(1) > 0).long().cpu()
        for kk in d.count_below:
            stats[f"below{kk}"][sl] = ((ranks < kk) & valid).sum(1).cpu()
    if d.subsets is not None:
        members = d.subsets.to(scores.device)[rows]
        if ex is not None:
            members = torch.where(members == ex[:, None], torch.full_like(members, PAD), members)
        m_ranks, _ = final_ranks(members)
        if first is not None:
            has_target = ((m_ranks == first[:, None]) & (members >= 0)).any(1)
            if not bool(has_target.all()):
                bad = rows[~has_target][:10].tolist()
                raise ValueError(f"{d.name}: the target is not among the subset members of queries {bad}")
            stats["sub_rank"][sl] = (m_ranks < first[:, None]).sum(1).cpu()
        order = torch.sort(m_ranks, dim=1, stable=True).indices
        ordered = members.gather(1, order)  # PAD members (rank n_gallery) sort last
        stats["sub_order"][sl] = ordered.cpu()
    if d.topk:
        stats["topk"][sl] = _final_topk(scores, ex, d.topk, cand, rescores).cpu()


def _final_topk(
    scores: Tensor, ex: Tensor | None, kk: int, cand: Tensor | None, rescores: Tensor | None
) -> Tensor:
    """The first kk items of the final order (re-ranked shortlist first, then the coarse order)."""
    if cand is None or rescores is None:
        return stable_topk(scores, kk, ex)
    # order the shortlist by re-score, ties by gallery index: sort by index, then stable by score
    by_idx = torch.sort(cand, dim=1).indices
    c1, r1 = cand.gather(1, by_idx), rescores.gather(1, by_idx)
    short = c1.gather(1, torch.sort(r1, dim=1, descending=True, stable=True).indices)
    k = cand.shape[1]
    if kk <= k:
        return short[:, :kk]
    return torch.cat([short, stable_topk(scores, kk, ex)[:, k:]], dim=1)


@dataclass
class Ranked:
    """Per-query statistics of one direction, with the helpers protocols use."""

    stats: dict[str, Tensor]
    details: dict[str, object] = field(default_factory=dict)

    def recall(self, k: int) -> float:
        return 100.0 * float((self.stats["first"] < k).double().mean())

    @property
    def n_tied(self) -> int:
        return int(self.stats["tied"].sum())
