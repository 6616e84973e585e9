"""Image-text matching scored once for both directions: blocks of image rows x all captions feed i2t and t2i.

i2t statistics come from each block exactly as in `engine.direction_stats`. Every caption has exactly one
relevant image (the image labels are distinct), so its t2i rank under the §0 order is the number of images
scoring higher than that image plus those with an equal score at a lower index: counts summed over the row
blocks. The positive pair's score is needed before the walk reaches it, so a small pre-pass (each image
against its own captions, a few rows at a time) estimates it. A scorer's value for a pair may differ in the
last bits with the shape of the call (matrix-multiply kernels do), so the walk counts only the scores clearly
above that estimate and keeps those within a narrow window around it; at the end the window is settled
against the positive score the walk itself computed. The ranks are thus exact for the matrix the walk saw,
the same one i2t ranks. Should the walk's positive score fall outside the window (a scorer whose values
depend on the call beyond rounding), or the window hold too many scores (masses of ties), t2i is ranked by
a second walk over the transposed source, as the two-walk path does, and a warning says so.

With re-ranking, each caption keeps a running coarse top-k (k x captions, merged block by block and, under
DDP, across ranks), which is re-scored with the source's pair scorer in the caption blocks the two-walk path
would use. Memory stays bounded by one block plus O(k x captions). On a scorer whose value for a pair does not
depend on the call (tested), every statistic equals the two-walk one; otherwise the two paths rank t2i on
matrices that may differ in the last bits, as the two-walk path's own i2t and t2i already do.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from fgbench.evaluation.distributed import all_gather_cat, all_reduce_sum, world
from fgbench.evaluation.engine import (
    Direction,
    Options,
    Positives,
    _check_finite,
    block,
    block_size,
    direction_stats,
    prepare,
)
from fgbench.evaluation.ranking import rerank_ranks, stable_topk
from fgbench.evaluation.source import ScoreSource

log = logging.getLogger(__name__)

PRE_ROWS = 16  # image rows per pre-pass call: the pre-pass scores about PRE_ROWS/n_images of the matrix
WINDOW = 1e-4  # relative half-width around the pre-pass score inside which scores are settled at the end


def itm_stats(
    source: ScoreSource, img_labels: Tensor, cap_labels: Tensor, opts: Options
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(i2t, t2i) per-query statistics of one image-text fold, rows = images, columns = captions."""
    if torch.unique(img_labels).numel() != img_labels.numel():
        raise ValueError("one-walk image-text evaluation needs distinct image labels (one row per image)")
    i2t_d = Direction(source=source, row_labels=img_labels, col_labels=cap_labels, name="i2t")
    t2i_d = Direction(source=source.T, row_labels=cap_labels, col_labels=img_labels, name="t2i")
    pos, _, k_i2t, i2t = prepare(i2t_d, opts)
    t2i_pos, _, k_t2i, t2i = prepare(t2i_d, opts)
    assert pos is not None and t2i_pos is not None
    n_img, n_cap, dev = source.n_rows, source.n_cols, source.device
    owner = t2i_pos.order[t2i_pos.start].to(dev)  # each caption's single relevant image

    rank_id, n_ranks = world()
    split = n_ranks > 1 and opts.distributed is not False

    def mine(n: int, b: int) -> list[int]:
        return [s for i, s in enumerate(range(0, n, b)) if not split or i % n_ranks == rank_id]

    v_pre = _positive_scores(source, pos, owner, mine(n_img, PRE_ROWS), split)
    # scores within `delta` of the pre-pass value are kept and compared with the walk's own value at the end
    scale = float(v_pre[torch.isfinite(v_pre)].abs().mean()) if bool(torch.isfinite(v_pre).any()) else 0.0
    delta = torch.where(torch.isfinite(v_pre), WINDOW * (v_pre.abs() + scale), torch.zeros_like(v_pre))
    lo, hi = v_pre - delta, v_pre + delta
    v_walk = torch.zeros_like(v_pre)  # each caption's positive score as the walk computed it
    ahead = torch.zeros(n_cap, dtype=torch.long, device=dev)
    near: list[tuple[Tensor, Tensor, Tensor]] = []  # (image, caption, score) inside the window
    n_near, overflow = 0, False
    top_v = top_i = None  # [captions, <= k] running coarse top-k of this rank's rows, in the §0 order
    b = block_size(n_cap, opts)
    starts = mine(n_img, b)
    for done, s0 in enumerate(starts, 1):
        s1 = min(n_img, s0 + b)
        rows = torch.arange(s0, s1, device=dev)
        scores = source.scores(rows)
        block(i2t_d, opts, pos, None, k_i2t, rows, i2t, scores=scores)  # raises on NaN scores
        ahead += (scores > hi).sum(0)
        if not overflow:
            r, c = torch.nonzero((scores >= lo) & (scores <= hi), as_tuple=True)
            n_near += r.numel()
            overflow = n_near > opts.max_elems // 8
            near.append((rows[r], c, scores[r, c]))
        here = torch.nonzero((owner >= s0) & (owner < s1)).squeeze(1)
        v_walk[here] = scores[owner[here] - s0, here]
        if k_t2i is not None:
            bv, bi = scores.T, rows[None, :].expand(n_cap, -1)
            if top_v is not None and top_i is not None:
                bv, bi = torch.cat([top_v, bv], 1), torch.cat([top_i, bi], 1)
            top_v, top_i = _running_topk(bv, bi, min(k_t2i, bv.shape[1]))
        if opts.progress is not None:
            opts.progress(done, len(starts))
    if split:  # one rank computed each caption's positive; the others hold zeros
        v_walk = all_reduce_sum(v_walk)
    outside = int(((v_walk < lo) | (v_walk > hi)).sum())
    n_eq = torch.zeros_like(ahead)
    if not overflow and near:  # resolve the window against the walk's own positive scores
        ri, ci, sv = (torch.cat(t) for t in zip(*near, strict=True))
        vt = v_walk[ci]
        ahead.index_add_(0, ci, ((sv > vt) | ((sv == vt) & (ri < owner[ci]))).long())
        n_eq.index_add_(0, ci, (sv == vt).long())
    if split:
        i2t = {name: all_reduce_sum(t) for name, t in i2t.items()}
        ahead, n_eq = all_reduce_sum(ahead), all_reduce_sum(n_eq)
        overflow = bool(all_reduce_sum(torch.tensor([int(overflow)])).item())  # `outside` is global already
        if k_t2i is not None:
            top_v, top_i = _pad(top_v, top_i, n_cap, k_t2i, n_img, dev)
            top_v, top_i = _merge_topk(_gather_cols(top_v, n_ranks), _gather_cols(top_i, n_ranks), k_t2i)
    if outside or overflow:
        why = (
            f"{outside} positive pairs scored differently by the pre-pass and the walk (beyond the window)"
            if outside
            else f"more than {opts.max_elems // 8} scores near the positive ones (ties)"
        )
        log.warning("one-walk evaluation: %s; ranking t2i by a second walk", why)
        return i2t, direction_stats(t2i_d, opts)
    ahead, n_eq = ahead.cpu(), n_eq.cpu()
    if k_t2i is None or top_i is None:
        t2i["first"], t2i["last"], t2i["n_pos"] = ahead.clone(), ahead.clone(), torch.ones_like(ahead)
        t2i["ap"] = 1.0 / (ahead.double() + 1.0)
        t2i["tied"] = (n_eq > 1).long()
        return i2t, t2i
    b = block_size(n_img, opts)  # the two-walk t2i's caption blocks: the pair scorer sees the same calls
    for s0 in mine(n_cap, b):
        caps = torch.arange(s0, min(n_cap, s0 + b), device=dev)
        cand = top_i[caps]
        rescores = t2i_d.source.pair_scores(caps[:, None].expand_as(cand), cand)
        _check_finite(rescores, caps, "t2i: re-rank scores")
        ranks, ties = rerank_ranks(ahead.to(dev)[caps][:, None], owner[caps][:, None], cand, rescores)
        sl = slice(s0, s0 + caps.numel())
        r = ranks[:, 0].cpu()
        t2i["first"][sl], t2i["last"][sl], t2i["n_pos"][sl] = r, r, 1
        t2i["ap"][sl] = 1.0 / (r.double() + 1.0)
        t2i["tied"][sl] = (ties[:, 0] > 0).long().cpu()
    if split:
        t2i = {name: all_reduce_sum(t) for name, t in t2i.items()}
    return i2t, t2i


def _positive_scores(
    source: ScoreSource, pos: Positives, owner: Tensor, starts: list[int], split: bool
) -> Tensor:
    """Each caption's score with its own image, from calls of PRE_ROWS images x their captions."""
    v = torch.zeros(source.n_cols, device=source.device)
    for s0 in starts:
        rows = torch.arange(s0, min(source.n_rows, s0 + PRE_ROWS), device=source.device)
        items = pos.items(rows)
        caps = items[items >= 0]
        scores = source.scores(rows, caps)
        v[caps] = scores[owner[caps] - s0, torch.arange(caps.numel(), device=caps.device)]
    return all_reduce_sum(v) if split else v  # one rank fills each caption, the others add zeros


def _running_topk(vals: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k of each row's candidates in the §0 order, when equal scores sit in ascending index order
    along the row (true of [running top-k, next block's rows] on one rank: the block's rows come later).

    `topk` finds the set wherever no score ties at the k-th value, the usual case for float scores; rows with
    such a tie take `stable_topk`, which keeps the lowest positions. Then the set is ordered by score, ties
    by position."""
    top = torch.topk(vals, k, dim=1, sorted=False)
    pos = top.indices
    kth = top.values.min(1, keepdim=True).values
    tied = torch.nonzero((vals >= kth).sum(1) != k).squeeze(1)
    if tied.numel():
        pos = pos.clone()
        pos[tied] = stable_topk(vals[tied], k)
    pos = pos.sort(1).values
    pos = pos.gather(1, torch.sort(vals.gather(1, pos), dim=1, descending=True, stable=True).indices)
    return vals.gather(1, pos), idx.gather(1, pos)


def _pad(
    top_v: Tensor | None, top_i: Tensor | None, n: int, k: int, sentinel: int, dev: torch.device
) -> tuple[Tensor, Tensor]:
    """A rank's running top-k widened to k with (-inf, sentinel index) entries, which sort after any real
    candidate in `_merge_topk` (a rank may have seen fewer than k rows, or none)."""
    pad_v = torch.full((n, k), float("-inf"), device=dev)
    pad_i = torch.full((n, k), sentinel, dtype=torch.long, device=dev)
    if top_v is not None and top_i is not None:
        pad_v[:, : top_v.shape[1]], pad_i[:, : top_i.shape[1]] = top_v, top_i
    return pad_v, pad_i


def _merge_topk(vals: Tensor, idx: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k of each row's (score, image index) candidates in the §0 order.

    Sorting by index, then stably by descending score, orders equal scores by index wherever they came from.
    """
    o = torch.argsort(idx, dim=1, stable=True)
    vals, idx = vals.gather(1, o), idx.gather(1, o)
    o = torch.argsort(vals, dim=1, descending=True, stable=True)[:, :k]
    return vals.gather(1, o), idx.gather(1, o)


def _gather_cols(t: Tensor, n_ranks: int) -> Tensor:
    """[C, k] on each rank -> [C, n_ranks * k]: every rank's candidates of each caption side by side."""
    c, k = t.shape
    return all_gather_cat(t).view(n_ranks, c, k).permute(1, 0, 2).reshape(c, n_ranks * k)
