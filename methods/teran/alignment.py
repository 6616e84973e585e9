"""TERAN's scores (docs/methods.md §2 "Alignment"): region-word alignments A_rw = ⟨v_r, t_w⟩ pooled per pair
(MrSw, MwSr, symm, MrAVGw), for blocks of captions x images and aligned pairs, and the evaluation's
length-bucketed form over real slots only (see `methods.teran` for the provenance)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from fgbench.features import length_buckets
from fgbench.pairwise import chunked_matrix, chunked_pairs

# -- alignment pooling (docs/methods.md §2 "Alignment") ------------------------------------------------------


def _words_max_regions(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    """Σ_w max_r A_rw over valid words: the max over regions per word, summed. A [..., W, R]."""
    m = A.masked_fill(~rmask.unsqueeze(-2), fill).amax(-1)
    keep = wmask & (rmask.any(-1, keepdim=True) | (fill == 0.0))
    return m.masked_fill(~keep, 0.0).sum(-1)


def _regions_max_words(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    """Σ_r max_w A_rw over valid regions: the max over words per region, summed. A [..., W, R]."""
    m = A.masked_fill(~wmask.unsqueeze(-1), fill).amax(-2)
    keep = rmask & (wmask.any(-1, keepdim=True) | (fill == 0.0))
    return m.masked_fill(~keep, 0.0).sum(-1)


def _symm(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    return _words_max_regions(A, wmask, rmask, fill) + _regions_max_words(A, wmask, rmask, fill)


def _mravgw(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    n_words = wmask.sum(-1).clamp_min(1).to(A.dtype)
    return _words_max_regions(A, wmask, rmask, fill) / n_words


Pooling = Callable[[Tensor, Tensor, Tensor, float], Tensor]
# (A [..., W, R], word mask [..., W], region mask [..., R], fill of masked entries) -> [...] scores
POOLINGS: dict[str, Pooling] = {
    "MrSw": _words_max_regions,
    "MwSr": _regions_max_words,
    "symm": _symm,
    "MrAVGw": _mravgw,
}


def pool_alignments(
    A: Tensor, wmask: Tensor, rmask: Tensor, mode: str, zero_pad_quirk: bool = False
) -> Tensor:
    """Pool region-word alignments A [..., W, R] (masks broadcastable to [..., W] and [..., R]) to scores.

    Masked words and regions are excluded from max and sum; with `zero_pad_quirk` they count as 0 in the
    max (mesnico/TERAN's `masked_fill_(mask, 0)` before it). An empty set scores 0.
    """
    if mode not in POOLINGS:
        raise ValueError(f"teran: alignment_mode {mode!r} is not one of {', '.join(POOLINGS)}")
    return POOLINGS[mode](A, wmask, rmask, 0.0 if zero_pad_quirk else float("-inf"))


def alignment_scores(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    region_mask: Tensor,
    mode: str = "MrSw",
    zero_pad_quirk: bool = False,
    chunk: int = 1 << 25,
    layout: str = "matrix",
) -> Tensor:
    """fp32 pooled alignments of captions (words [n_q, W, e]) x images (regions [n_g, R, e]), [n_q, n_g]
    (`layout="matrix"`), or of the aligned pairs (words[i], regions[i]), [n] (`"pairs"`): one function.

    Computed in chunks of queries x gallery items (or of pairs) so that one chunk's alignment tensor holds at
    most `chunk` elements (the full [n_q, n_g, W, R] tensor is never built); differentiable, autocast off.
    """
    per_pair, device = words.shape[1] * regions.shape[1], words.device

    def block(i: slice, j: slice) -> Tensor:
        A = torch.einsum("qwe,gre->qgwr", words[i].float(), regions[j].float())
        return pool_alignments(A, word_mask[i, None, :], region_mask[None, j], mode, zero_pad_quirk)

    def pairs(p: slice) -> Tensor:
        A = torch.einsum("nwe,nre->nwr", words[p].float(), regions[p].float())
        return pool_alignments(A, word_mask[p], region_mask[p], mode, zero_pad_quirk)

    with torch.autocast(device.type, enabled=False):
        if layout == "pairs":
            return chunked_pairs(pairs, len(words), per_pair, chunk, device)
        return chunked_matrix(block, len(words), len(regions), per_pair, chunk, device)


alignment_matrix = alignment_scores  # [n_q, n_g] of captions x images
alignment_pairs = partial(alignment_scores, layout="pairs")  # [n] of aligned pairs


# -- scoring real slots only: sets grouped by length (evaluation) -------------------------------------------


SCORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _align_block(
    words: Tensor, wmask: Tensor, regions: Tensor, rmask: Tensor, mode: str, dtype: torch.dtype
) -> Tensor:
    """[n_q, n_g] pooled alignments of one chunk, as one matmul [n_q W, e] x [e, n_g R]."""
    n_q, W, e = words.shape
    n_g, R, _ = regions.shape
    A = torch.mm(words.reshape(n_q * W, e).to(dtype), regions.reshape(n_g * R, e).to(dtype).T)
    A = A.view(n_q, W, n_g, R).permute(0, 2, 1, 3).float()  # [n_q, n_g, W, R]
    return pool_alignments(A, wmask[:, None, :], rmask[None], mode)


def _align_chunks(
    words: Tensor, wmask: Tensor, regions: Tensor, rmask: Tensor, mode: str, dtype: torch.dtype, chunk: int
) -> Tensor:
    """[n_q, n_g] `_align_block` over chunks of at most `chunk` alignment elements."""

    def block(i: slice, j: slice) -> Tensor:
        return _align_block(words[i], wmask[i], regions[j], rmask[j], mode, dtype)

    per_pair = words.shape[1] * regions.shape[1]
    return chunked_matrix(block, len(words), len(regions), per_pair, chunk, words.device)


def _packed_words_max_regions(
    words: Tensor, word_mask: Tensor, regions: Tensor, out: Tensor, chunk: int, dtype: torch.dtype
) -> None:
    """Add Σ_w max_r A_rw of every caption x image to `out` [n_q, n_g], the captions' real words packed into
    one [n_words, e] matrix (no padded word is multiplied) and every region of `regions` [n_g, R, e] valid;
    the per-word maxima are summed per caption by `index_add_`."""
    rows_of, slots = word_mask.nonzero(as_tuple=True)
    n_w, (n_g, R, e) = len(rows_of), regions.shape
    if n_w == 0:
        return
    packed = words[rows_of, slots].to(dtype)  # [n_words, e]
    cols = max(1, min(n_g, chunk // (R * min(n_w, 256))))
    rows = max(1, min(n_w, chunk // (R * cols)))
    for j in range(0, n_g, cols):
        gal = regions[j : j + cols].to(dtype).reshape(-1, e)  # converted once per gallery chunk
        part = out.new_zeros(len(out), min(cols, n_g - j))
        for i in range(0, n_w, rows):
            m = torch.mm(packed[i : i + rows], gal.T).view(-1, part.shape[1], R).amax(-1)
            part.index_add_(0, rows_of[i : i + rows], m.float())
        out[:, j : j + cols] += part


def bucketed_alignment_matrix(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    region_mask: Tensor,
    mode: str = "MrSw",
    chunk: int = 1 << 25,
    score_dtype: str = "float32",
) -> Tensor:
    """`alignment_scores` (without the zero-padding quirk) over real slots only, for evaluation.

    Images are grouped by region extent (`length_buckets`). MrSw and MrAVGw over groups whose regions are all
    valid pack the captions' real words into one matrix (`_packed_words_max_regions`); the other modes
    group captions by word extent too and score each pair of groups at its own lengths. Chunks hold at
    most `chunk` alignment elements; results are scattered back. Equal to the padded computation up to float
    summation order (fp32); `score_dtype="bfloat16"` multiplies in bf16 (the stored dtype) with a bf16
    alignment tensor, pooled in fp32. For evaluation: it reads the masks on the host.
    """
    if score_dtype not in SCORE_DTYPES:
        raise ValueError(f"teran: score_dtype {score_dtype!r} is not one of {', '.join(SCORE_DTYPES)}")
    if mode not in POOLINGS:
        raise ValueError(f"teran: alignment_mode {mode!r} is not one of {', '.join(POOLINGS)}")
    dtype = SCORE_DTYPES[score_dtype]
    n_q, n_g = len(words), len(regions)
    out = torch.zeros(n_q, n_g, dtype=torch.float32, device=words.device)
    caption_groups: list[tuple[Tensor, int]] | None = None
    with torch.autocast(words.device.type, enabled=False):
        for gi, R in length_buckets(region_mask):
            if len(gi) == n_g:  # one group (indices in order): a view, not a copy of the gallery
                r, rm = regions[:, :R], region_mask[:, :R]
            else:
                r, rm = regions[gi, :R], region_mask[gi, :R]
            if mode in ("MrSw", "MrAVGw") and bool(rm.all()):
                part = out.new_zeros(n_q, len(gi))
                _packed_words_max_regions(words, word_mask, r, part, chunk, dtype)
                if mode == "MrAVGw":
                    part /= word_mask.sum(1, keepdim=True).clamp_min(1)
                out[:, gi] = part
                continue
            if caption_groups is None:
                caption_groups = length_buckets(word_mask)
            for qi, W in caption_groups:
                block = _align_chunks(words[qi, :W], word_mask[qi, :W], r, rm, mode, dtype, chunk)
                out[qi[:, None], gi[None, :]] = block
    return out
