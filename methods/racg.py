"""RACG (Peng et al., IEEE TNNLS 35(2):2194-2207, 2024), docs/methods.md §3: word and region graphs matched by
a cross-graph relation encoder and a multi-head node similarity.

**A re-implementation from the paper's description.** RACG's code, equations and hyper-parameters are not
public, so this module builds our reading of the abstract (and that of its SIGIR 2021 precursor CGAM) on
TERAN's inputs and text encoder (`methods.teran`), so that the two compare with everything else held equal.
No published numbers are available to compare with: its leaderboard cells stay empty, next to `teran`,
`vsepp` and the literature anchors. Nothing here claims to reproduce the paper.

What comes from where (docs/methods.md marks):
- [text] a semantic-embedded graph per modality over fine-grained objects and their relations; a cross-graph
  relation encoder that models inter-modal relations and "mutually boosts" correlations; feature
  reconstruction from shared semantic concepts and the original embeddings; a multi-head similarity for
  node-level correspondence.
- [inf] (docs/methods.md §3) everything else, namely:
  - nodes: regions V0 = Linear(region) + Linear([x1, y1, x2, y2, area]), words T0 = Linear(text tokens), at
    D (1024; 64 tiny);
  - intra-graph relation aggregation, `graph_layers` residual layers per modality: E = masked
    softmax_j(φ(x_i)·ψ(x_j)/√D); the image graph adds the spatial edges E_sp = row-normalised box IoU,
    Â = (E + E_sp)/2, the text graph Â = E; X <- LN(X + ReLU(Â X W)); nodes and the globals v̄, t̄ (masked
    means) L2-normalised;
  - cross-graph relation encoder, per pair and head h (H = 8 of 128; 4 of 16 tiny), λ = 9: the visual
    context of a word a_w = Σ_r softmax_r(λ t̂ʰ_w·v̂ʰ_r) vʰ_r, the textual context of a region
    c_r = Σ_w softmax_w(λ v̂ʰ_r·t̂ʰ_w) tʰ_w, spread along each modality's own last Â with β = 0.5:
    a'_w = (1-β) a_w + β Σ_w' Â^T_ww' a_w', c'_r likewise over Â^V;
  - S(i, j) = (1/2H) Σ_h [mean_w cos(tʰ_w, a'ʰ_w) + mean_r cos(vʰ_r, c'ʰ_r)];
  - L = L_hinge(S) + λ_rec L_rec (+ L_hinge(v̄·t̄) with `global_aux`); L_hinge is TERAN's (α = 0.2, hardest
    negatives, summed); L_rec over the positive pairs only: mean_w (1 - cos(W_t a_w, sg(t_w))) +
    mean_r (1 - cos(W_v c_r, sg(v_r))), a_w and c_r the contexts before the spreading (heads concatenated),
    λ_rec = 0.1;
  - recipe: Adam, lr 2e-4 (BERT 2e-5), x0.1 at epoch 15, 30 epochs, batch 64, gradient clipping 2.0;
  - test time: pairwise and exact by default; with P = the per-head dot products and π' the spread attention
    weights, tʰ_w·a'_w = Σ_r π'_wr P_wr and ‖a'_w‖² = π'_wᵀ (Vʰ Vʰᵀ) π'_w (likewise c'_r with Tʰ Tʰᵀ), so
    no per-pair context is materialised; `rerank_k` shortlists by v̄·t̄ (trained only with `global_aux`).
- our reading, below the level of docs/methods.md:
  - the text graph's nodes are the scored words of TERAN's window (`word_span`, default `drop_period`), not
    [CLS]/[SEP];
  - Â gives masked nodes zero weight (columns) and masked rows are zero; E_sp's diagonal is 1 for every valid
    node (IoU with itself, also for degenerate boxes); on the tiny grid cells, which only touch, IoU is 0
    between distinct cells, so E_sp reduces to self-loops there;
  - with `intra_graph=false` the nodes are not updated, but one edge module still builds Â from the input
    nodes for the spreading (the ablation removes the node update, not the edges);
  - `cross_graph=false` scores and trains v̄·t̄ alone (there are no contexts, so no L_rec: λ_rec is 0 then,
    recorded); data without boxes (`precomp`) drops the box term and the spatial edges, recorded;
  - token sets and Â are stored in bf16 (`store_dtype`) and scored in fp32 in chunks of at most
    `score_chunk` elements per [b_q, b_g, H, W, R] tensor; Â travels in `Features.aux["adj"]` (absent when
    β = 0 or cross-graph is off); blocks are scored by `relation_matrix`, aligned pairs (re-ranking) by
    `relation_block`: the same function, checked against materialised contexts in the tests;
  - the tiny profile: TERAN's tiny inputs (TinyText words; TinyCNN grid cells, or RoI averages over the
    boxes served with the images), D = 64, H = 4, AdamW 1e-3 with a cosine schedule, and TERAN's first
    epoch of the hinge summed over all negatives (`sum_warmup_epochs`; every epoch on person data, as teran);
  - class-level protocols (class_reed: CUB, Flowers) average caption embeddings, which a pairwise scorer
    does not define: an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import PairBatch, Text, TextBatch, Visual, VisualBatch
from fgbench.data.module import RetrievalDataModule, region_dim
from fgbench.encoders import MethodProcessor, TinyCNN, build_image_encoder
from fgbench.encoders.layers import masked_mean, masked_softmax, text_inputs, zero_padding
from fgbench.encoders.regions import box_infos
from fgbench.evaluation import EvalResult, EvalSpec
from fgbench.features import STORE_DTYPES, Features, length_buckets
from fgbench.losses import hardest_negative_triplet
from fgbench.losses.warmup import summed_hinge_epochs, warmup_label
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method
from methods.teran import (
    TEXT_ENCODERS,
    WORD_SPANS,
    TERANConfig,
    punctuation_table,
    region_inputs,
    scored_tokens,
    slots_used,
    word_mask,
)

PROVENANCE = "re-implementation from the paper's description"
EPS = 1e-8

# -- graph edges and intra-graph relation aggregation -------------------------------------------------------


def spatial_edges(boxes: Tensor, mask: Tensor) -> Tensor:
    """E_sp [B, R, R]: box IoU (normalised x1, y1, x2, y2), diagonal 1, rows normalised over valid nodes;
    masked rows and columns are 0."""
    b = boxes.float()
    lt = torch.maximum(b[:, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(b[:, :, None, 2:], b[:, None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = box_infos(b)[..., 4].clamp_min(0)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp_min(EPS)
    eye = torch.eye(iou.shape[-1], dtype=torch.bool, device=iou.device)
    valid = mask[:, :, None] & mask[:, None, :]
    iou = torch.where(eye, torch.ones_like(iou), iou).masked_fill(~valid, 0.0)
    return iou / iou.sum(-1, keepdim=True).clamp_min(EPS)


class GraphLayer(nn.Module):
    """One intra-graph relation layer: Â = masked softmax_j(φ(x_i)·ψ(x_j)/√D) [averaged with E_sp], then
    (with `update`) X <- LN(X + ReLU(Â X W)). Without `update` it only builds the edges."""

    def __init__(self, dim: int, update: bool = True) -> None:
        super().__init__()
        self.phi, self.psi = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.w = nn.Linear(dim, dim, bias=False) if update else None
        self.norm = nn.LayerNorm(dim) if update else None

    def edges(self, x: Tensor, mask: Tensor, spatial: Tensor | None) -> Tensor:
        """Â [B, N, N]: rows of valid nodes sum to 1, masked nodes get zero weight, masked rows are 0."""
        logits = self.phi(x) @ self.psi(x).transpose(1, 2) / math.sqrt(x.shape[-1])
        adj = masked_softmax(logits.float(), mask[:, None, :]).masked_fill(~mask[:, :, None], 0.0)
        return adj if spatial is None else (adj + spatial) / 2

    def forward(self, x: Tensor, mask: Tensor, spatial: Tensor | None) -> tuple[Tensor, Tensor]:
        adj = self.edges(x, mask, spatial)
        if self.w is None or self.norm is None:
            return x, adj
        return self.norm(x + F.relu(adj.to(x.dtype) @ self.w(x))), adj


class RelationGraph(nn.Module):
    """A modality's semantic-embedded graph: `layers` GraphLayers (`update`), or one edge-only layer."""

    def __init__(self, dim: int, layers: int, update: bool) -> None:
        super().__init__()
        n = layers if update else 1
        self.layers = nn.ModuleList(GraphLayer(dim, update) for _ in range(n))

    def forward(self, x: Tensor, mask: Tensor, spatial: Tensor | None) -> tuple[Tensor, Tensor]:
        """(updated nodes [B, N, D], the last layer's Â [B, N, N])."""
        adj = x.new_zeros(x.shape[0], x.shape[1], x.shape[1])
        for layer in self.layers:
            x, adj = layer(x, mask, spatial)
        return x, adj


# -- the cross-graph relation encoder and multi-head similarity (docs/methods.md §3) -------------------------

# einsum equations of aligned pairs p (captions q[p] with images g[p]): [p, H, W, R] tensors
_PAIRS: dict[str, str] = {
    "P": "pwhe,prhe->phwr",
    "mix_t": "pwv,phvr->phwr",
    "mix_v": "prs,phws->phwr",
    "gram_v": "phwr,phrs->phws",
    "gram_t": "phwv,phvr->phwr",
}


class Attention(NamedTuple):
    """Per-head word-region attention of a block: P, π (over regions), ρ (over words), inverse norms."""

    P: Tensor  # tʰ_w·vʰ_r [..., H, W, R]
    pi: Tensor  # softmax_r(λ t̂ʰ_w·v̂ʰ_r) [..., H, W, R]
    rho: Tensor  # softmax_w(λ v̂ʰ_r·t̂ʰ_w) [..., H, W, R] (normalised over W)
    inv_t: Tensor  # 1/‖tʰ_w‖ [n_q, H, W]
    inv_v: Tensor  # 1/‖vʰ_r‖ [n_g, H, R]


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[n, N, D] -> [n, N, H, D/H] (fp32)."""
    n, t, d = x.shape
    return x.float().reshape(n, t, heads, d // heads)


def attention(Th: Tensor, wmask: Tensor, Vh: Tensor, rmask: Tensor, lam: float) -> Attention:
    """Word-to-region (π) and region-to-word (ρ) attention per head of aligned pairs, Th [n, W, H, e],
    Vh [n, R, H, e] (blocks of captions x images go through `relation_matrix`)."""
    inv_t = 1.0 / Th.norm(dim=-1).clamp_min(EPS).transpose(1, 2)
    inv_v = 1.0 / Vh.norm(dim=-1).clamp_min(EPS).transpose(1, 2)
    P = torch.einsum(_PAIRS["P"], Th, Vh)
    logits = lam * P * inv_t[..., :, None] * inv_v[..., None, :]
    pi = masked_softmax(logits, rmask[..., None, None, :], dim=-1)
    rho = masked_softmax(logits, wmask[..., None, :, None], dim=-2)
    return Attention(P, pi, rho, inv_t, inv_v)


# score_sides -> S from the word side s_a = mean_w cos(t_w, a'_w) and the region side mean_r cos(v_r, c'_r)
SIDES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "both": lambda s_a, s_c: (s_a + s_c) / 2,  # docs/methods.md §3
    "words": lambda s_a, s_c: s_a,  # our diagnostic: every caption word against its visual context only
    "regions": lambda s_a, s_c: s_c,  # our diagnostic: every region against its textual context only
}


def _spread(x: Tensor, adj: Tensor | None, beta: float, eq: str) -> Tensor:
    """(1 - β) x + β Â x along one modality's nodes (identity when β = 0 or there is no Â)."""
    if beta == 0.0 or adj is None:
        return x
    return (1.0 - beta) * x + beta * torch.einsum(eq, adj.float(), x)


def relation_block(
    words: Tensor,
    wmask: Tensor,
    wadj: Tensor | None,
    regions: Tensor,
    rmask: Tensor,
    radj: Tensor | None,
    heads: int,
    lam: float,
    beta: float,
    sides: str = "both",
) -> Tensor:
    """S [n] of aligned pairs (caption i with image i; the re-rank's pairs) by the Gram-matrix form (fp32);
    `relation_matrix` is the same function for blocks of captions x images (tests check both by brute force).

    With π' the attention spread along the caption's Â (a'_w = Σ_r π'_wr vʰ_r): tʰ_w·a'_w = Σ_r π'_wr P_wr and
    ‖a'_w‖² = π'_wᵀ (Vʰ Vʰᵀ) π'_w; likewise c'_r with ρ' spread along the image's Â and Tʰ Tʰᵀ.
    """
    Th, Vh = split_heads(words, heads), split_heads(regions, heads)
    att = attention(Th, wmask, Vh, rmask, lam)
    pi = _spread(att.pi, wadj, beta, _PAIRS["mix_t"])  # π' [n, H, W, R]
    rho = _spread(att.rho, radj, beta, _PAIRS["mix_v"])  # ρ' [n, H, W, R]
    gram_v = torch.einsum("grhe,gshe->ghrs", Vh, Vh)  # Vʰ Vʰᵀ per image
    gram_t = torch.einsum("qwhe,qvhe->qhwv", Th, Th)  # Tʰ Tʰᵀ per caption
    wm, rm = wmask[:, None, :], rmask[:, None, :]
    sq_a = (torch.einsum(_PAIRS["gram_v"], pi, gram_v) * pi).sum(-1)  # ‖a'_w‖²
    cos_a = (pi * att.P).sum(-1) * att.inv_t / sq_a.clamp_min(EPS * EPS).sqrt()  # [n, H, W]
    sq_c = (torch.einsum(_PAIRS["gram_t"], gram_t, rho) * rho).sum(-2)  # ‖c'_r‖²
    cos_c = (rho * att.P).sum(-2) * att.inv_v / sq_c.clamp_min(EPS * EPS).sqrt()  # [n, H, R]
    s_a = cos_a.masked_fill(~wm, 0.0).sum(-1) / wm.sum(-1).clamp_min(1)
    s_c = cos_c.masked_fill(~rm, 0.0).sum(-1) / rm.sum(-1).clamp_min(1)
    return SIDES[sides](s_a.mean(-1), s_c.mean(-1))


def _sq_norm(weights: Tensor, X: Tensor) -> Tensor:
    """‖Σ_n w_n x_n‖² for weights [.., M, N] over the nodes X [.., N, e]: the combination itself when e < N
    (2e per weight), else the Gram form wᵀ (X Xᵀ) w (2N per weight)."""
    if X.shape[-1] < X.shape[-2]:
        return torch.matmul(weights, X).square().sum(-1)
    return (torch.matmul(weights, X @ X.transpose(-1, -2)) * weights).sum(-1)


def relation_matrix(
    words: Tensor,
    wmask: Tensor,
    wadj: Tensor | None,
    regions: Tensor,
    rmask: Tensor,
    radj: Tensor | None,
    heads: int,
    lam: float,
    beta: float,
    sides: str = "both",
) -> Tensor:
    """[n_q, n_g] S of one block, the same function as `relation_block` in fewer passes over its tensors.

    The [H, n_q, W, n_g, R] tensors are laid out so that every product is one batched matmul: word-side
    products (the spreading along the caption's Â, the Gram form of ‖c'_r‖) batch over captions, region-side
    ones over images. Two facts save passes: the logits are λ·cos in [-λ, λ], so exp(λ(cos - 1)) needs no
    max-subtraction (`attn_lambda` is capped at 40: no underflow of a whole row); and cos(t_w, a'_w) does not
    change when a row of π' is scaled, so without the spreading (β = 0) the softmax needs no normalisation.
    """
    q, W, D = words.shape
    g, R, _ = regions.shape
    h, e = heads, D // heads
    T = words.float().reshape(q, W, h, e).permute(2, 0, 1, 3)  # [h, q, W, e]
    V = regions.float().reshape(g, R, h, e).permute(2, 0, 1, 3)  # [h, g, R, e]
    nt, nv = T.norm(dim=-1).clamp_min(EPS), V.norm(dim=-1).clamp_min(EPS)  # [h, q, W], [h, g, R]
    Tn, Vn = T / nt[..., None], V / nv[..., None]
    # Q = t̂·v [h, q, W, g, R]; E = exp(λ(cos - 1)) on valid word-region pairs, 0 elsewhere
    Q = torch.matmul(Tn.reshape(h, q * W, e), V.reshape(h, g * R, e).transpose(1, 2)).view(h, q, W, g, R)
    bias_w = torch.where(wmask, 0.0, -1e4).to(Q.dtype)  # -1e4 (exp: 0) off the valid word-region pairs
    bias = bias_w[:, :, None, None] + torch.where(rmask, -lam, -1e4).to(Q.dtype)[None, None]  # [q, W, g, R]
    E = torch.addcmul(bias, Q, (lam / nv)[:, None, None]).exp_()
    spread = beta > 0
    # words -> regions: a'_w = Σ_r π'_wr vʰ_r; cos(tʰ_w, a'_w) = Σ_r π'_wr Q_wr / ‖a'_w‖
    pi = E
    if spread and wadj is not None:
        pi = E / E.sum(-1, keepdim=True).clamp_min(torch.finfo(E.dtype).tiny)
        mix = beta * wadj.float() + (1.0 - beta) * torch.eye(W, device=E.device)  # [q, W, W]
        pi = torch.matmul(mix, pi.view(h, q, W, g * R)).view(h, q, W, g, R)
    PQ = pi * Q
    num_a = PQ.sum(-1)  # [h, q, W, g]
    by_image = pi.reshape(h, q * W, g, R).transpose(1, 2).contiguous()  # [h, g, qW, R]
    sq_a = _sq_norm(by_image, V)  # ‖a'_w‖² [h, g, qW]
    cos_a = num_a / sq_a.view(h, g, q, W).permute(0, 2, 3, 1).clamp_min(EPS * EPS).sqrt()
    s_a = cos_a.masked_fill(~wmask[:, :, None], 0.0).sum(2) / wmask.sum(1).clamp_min(1)[:, None]  # [h, q, g]
    if sides == "words":
        return s_a.mean(0)
    # regions -> words: c'_r = Σ_w ρ'_wr tʰ_w; cos(vʰ_r, c'_r) = Σ_w ρ'_wr P̃_wr / ‖c'_r‖, P̃ = v̂·t = Q·‖t‖/‖v‖
    if spread and radj is not None:
        rho = E.permute(0, 3, 4, 1, 2).contiguous()  # [h, g, R, q, W]
        rho = rho / rho.sum(-1, keepdim=True).clamp_min(torch.finfo(E.dtype).tiny)
        mix = beta * radj.float() + (1.0 - beta) * torch.eye(R, device=E.device)  # [g, R, R]
        rho = torch.matmul(mix, rho.view(h, g, R, q * W)).view(h, g, R, q, W)
        Pt = torch.matmul(Vn.reshape(h, g * R, e), T.reshape(h, q * W, e).transpose(1, 2)).view(h, g, R, q, W)
        num_c = (rho * Pt).sum(-1)  # [h, g, R, q]
        by_caption = rho.reshape(h, g * R, q, W).transpose(1, 2).contiguous()  # [h, q, gR, W]
    else:  # ρ' = E in E's own layout: P̃ from Q elementwise, and E·Q shared with the word side when π' = E
        EQ = PQ if pi is E else E * Q
        num_c = EQ.mul_(nt[..., None, None]).sum(2).div_(nv[:, None]).permute(0, 2, 3, 1)  # [h, g, R, q]
        by_caption = E.reshape(h, q, W, g * R).transpose(2, 3).contiguous()  # [h, q, gR, W]
    sq_c = _sq_norm(by_caption, T)  # ‖c'_r‖² [h, q, gR]
    cos_c = num_c / sq_c.view(h, q, g, R).permute(0, 2, 3, 1).clamp_min(EPS * EPS).sqrt()  # [h, g, R, q]
    s_c = cos_c.masked_fill(~rmask[:, :, None], 0.0).sum(2) / rmask.sum(1).clamp_min(1)[:, None]  # [h, g, q]
    return SIDES[sides](s_a.mean(0), s_c.transpose(1, 2).mean(0))


def contexts(
    words: Tensor, wmask: Tensor, regions: Tensor, rmask: Tensor, heads: int, lam: float
) -> tuple[Tensor, Tensor]:
    """Materialised contexts of aligned pairs, heads concatenated: a_w [n, W, D], c_r [n, R, D] (before the
    spreading; L_rec's inputs, so only the B positive pairs of a batch ever build them)."""
    Th, Vh = split_heads(words, heads), split_heads(regions, heads)
    att = attention(Th, wmask, Vh, rmask, lam)
    a = torch.einsum("phwr,prhe->pwhe", att.pi, Vh).flatten(2)
    c = torch.einsum("phwr,pwhe->prhe", att.rho, Th).flatten(2)
    return a, c


def _fit(adj: Tensor | None, n: int) -> Tensor | None:
    """Â zero-padded (or cut) to n nodes, so token sets padded after encoding keep their edges."""
    if adj is None or adj.shape[-1] == n:
        return adj
    if adj.shape[-1] > n:
        return adj[:, :n, :n]
    return F.pad(adj, (0, n - adj.shape[-1], 0, n - adj.shape[-1]))


def _trim(x: Tensor, mask: Tensor, adj: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cut a block's node sets after its last valid node (exact: later nodes are masked)."""
    adj = _fit(adj, x.shape[1])
    n = slots_used(mask)
    return x[:, :n], mask[:, :n], None if adj is None else adj[:, :n, :n]


@dataclass
class Nodes:
    """One modality's encoded graph: unit nodes [B, N, D] (zero where masked), mask, Â, unit global."""

    tok: Tensor
    mask: Tensor
    adj: Tensor | None  # the last Â [B, N, N] (float32); None without a graph
    glob: Tensor


def relation_scores(
    q: Nodes | Features,
    g: Nodes | Features,
    heads: int,
    lam: float,
    beta: float,
    layout: str = "matrix",
    chunk: int = 1 << 22,
    sides: str = "both",
) -> Tensor:
    """Cross-graph similarity of captions `q` x images `g` ([n_q, n_g], "matrix") or of aligned pairs ([n],
    "pairs"), in chunks whose [.., H, W, R] tensors hold at most `chunk` elements; differentiable, fp32."""
    qa, ga = _adj_of(q), _adj_of(g)
    assert q.tok is not None and q.mask is not None and g.tok is not None and g.mask is not None
    words, wmask, wadj = _trim(q.tok, q.mask, qa if beta else None)
    regions, rmask, radj = _trim(g.tok, g.mask, ga if beta else None)
    n_q, n_g = len(words), len(regions)
    per_pair = heads * words.shape[1] * regions.shape[1]
    pairs = max(1, chunk // per_pair)
    with torch.autocast(words.device.type, enabled=False):
        if layout == "pairs":
            parts = [
                relation_block(
                    words[i : i + pairs],
                    wmask[i : i + pairs],
                    None if wadj is None else wadj[i : i + pairs],
                    regions[i : i + pairs],
                    rmask[i : i + pairs],
                    None if radj is None else radj[i : i + pairs],
                    heads,
                    lam,
                    beta,
                    sides,
                )
                for i in range(0, n_q, pairs)
            ]
            return torch.cat(parts) if parts else words.new_zeros(0, dtype=torch.float32)
        cols = max(1, min(n_g, pairs))
        rows = max(1, min(n_q, pairs // cols))
        out = []
        for i in range(0, n_q, rows):
            qs = (words[i : i + rows], wmask[i : i + rows], None if wadj is None else wadj[i : i + rows])
            out.append(
                torch.cat(
                    [
                        relation_matrix(
                            *qs,
                            regions[j : j + cols],
                            rmask[j : j + cols],
                            None if radj is None else radj[j : j + cols],
                            heads,
                            lam,
                            beta,
                            sides,
                        )
                        for j in range(0, n_g, cols)
                    ],
                    dim=1,
                )
            )
        return torch.cat(out) if out else words.new_zeros(0, n_g, dtype=torch.float32)


def bucketed_relation_scores(
    q: Nodes | Features,
    g: Nodes | Features,
    heads: int,
    lam: float,
    beta: float,
    chunk: int = 1 << 22,
    sides: str = "both",
) -> Tensor:
    """`relation_scores` [n_q, n_g] over real nodes only, for evaluation: captions grouped by word extent and
    images by node extent (`length_buckets`, one host sync), each pair of groups scored at its own lengths
    with its Â cut alike, scattered back (exact: the nodes cut are masked)."""
    assert q.tok is not None and q.mask is not None and g.tok is not None and g.mask is not None
    qa, ga = _adj_of(q), _adj_of(g)
    qa, ga = (_fit(qa, q.tok.shape[1]), _fit(ga, g.tok.shape[1])) if beta else (None, None)

    def part(x: Tensor, mask: Tensor, adj: Tensor | None, idx: Tensor, n: int) -> Nodes:
        cut = None if adj is None else adj[idx, :n, :n]
        return Nodes(tok=x[idx, :n], mask=mask[idx, :n], adj=cut, glob=x.new_zeros(0))

    out = torch.zeros(len(q.tok), len(g.tok), dtype=torch.float32, device=q.tok.device)
    gal = [(gi, part(g.tok, g.mask, ga, gi, R)) for gi, R in length_buckets(g.mask)]
    for qi, W in length_buckets(q.mask):
        qn = part(q.tok, q.mask, qa, qi, W)
        for gi, gn in gal:
            out[qi[:, None], gi[None, :]] = relation_scores(qn, gn, heads, lam, beta, "matrix", chunk, sides)
    return out


def _adj_of(x: Nodes | Features) -> Tensor | None:
    return x.adj if isinstance(x, Nodes) else x.aux.get("adj")


# -- configuration -----------------------------------------------------------------------------------------


@dataclass
class RACGConfig:
    """Sizes and recipe of one RACG profile (the ablation switches of docs/methods.md §3 are `RACG`
    arguments)."""

    text_encoder: str = "tiny_text"  # teran's text encoder: tiny_text (word vocabulary) or bert (word-pieces)
    bert_layers: int = 6  # bert: keep its first N layers (fine-tuned)
    text_width: int = 64  # tiny_text: width (its depth 2, 4 heads, MLP 2x)
    max_words: int = 1000  # tiny_text: vocabulary cap (most frequent training words)
    max_len: int = 16  # tiny_text: words per caption; bert: word-pieces with [CLS]/[SEP] (TERAN: 88)
    image_encoder: str = "tiny_cnn"  # pixels -> regions (grid cells, or RoI averages over the data's boxes)
    image_kwargs: dict[str, Any] = field(default_factory=dict)  # its arguments
    image_size: tuple[int, int] | None = None  # processor (H, W); None: the DataModule's tiny size
    roi_boxes: bool = True  # tiny_cnn: RoI-average its map over the boxes served with the images
    max_regions: int = 36  # region sets from data or boxes are padded to this many slots at test time
    embed_dim: int = 64  # D: node width (paper reading: 1024)
    heads: int = 4  # H of the cross-graph encoder and multi-head similarity (paper reading: 8 of 128)
    graph_layers: int = 2  # intra-graph relation layers per modality
    attn_lambda: float = 9.0  # λ: inverse temperature of the word-region attention
    margin: float = 0.2  # α of the hinge
    sum_warmup_epochs: int | None = None  # summed-hinge (VSE0) epochs first; None: per task family (vsepp)
    store_dtype: str = "bfloat16"  # dtype of the node sets and Â kept for scoring (computed in fp32)
    score_chunk: int = 1 << 22  # max elements of one [b_q, b_g, H, W, R] tensor while scoring
    score_buckets: bool = True  # evaluation scores real nodes only, sets grouped by length (exact)
    optimizer: str = "adamw"  # fgbench.optim OPTIMIZERS key
    lr: float = 1e-3  # learning rate of the new modules
    text_lr_mult: float = 1.0  # lr multiplier of the pretrained text encoder (paper reading: 0.1 -> 2e-5)
    weight_decay: float = 0.01  # weight decay
    schedule: str = "cosine"  # fgbench.optim SCHEDULES key
    step_epochs: int = 15  # "step" schedule: epochs between decays
    gamma: float = 0.1  # "step" schedule: decay factor
    grad_clip: float = 2.0  # gradient-norm clipping (0: off)


PROFILES: dict[str, RACGConfig] = {
    "tiny": RACGConfig(),
    "paper": RACGConfig(
        text_encoder="bert",
        max_len=88,
        embed_dim=1024,
        heads=8,
        sum_warmup_epochs=0,
        score_chunk=1 << 26,
        optimizer="adam",
        lr=2e-4,
        text_lr_mult=0.1,
        weight_decay=0.0,
        schedule="step",
        step_epochs=15,
    ),
}


def _text_encoder(hp: RACGConfig, bert_path: str, dm: RetrievalDataModule) -> tuple[Any, nn.Module]:
    """TERAN's text encoder of the same name and sizes (BERT-6 word-pieces or TinyText words)."""
    teran = TERANConfig(
        text_encoder=hp.text_encoder,
        bert_layers=hp.bert_layers,
        text_width=hp.text_width,
        max_words=hp.max_words,
        max_len=hp.max_len,
    )
    return TEXT_ENCODERS[hp.text_encoder](teran, bert_path, dm)


@register_method("racg")
class RACG(RetrievalMethod):
    """RACG: word and region graphs, a cross-graph relation encoder and a multi-head node similarity.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        intra_graph: the intra-graph relation layers (False: nodes are not updated; Â is still built).
        spatial_edges: add the box-IoU edges to the image graph (forced off on data without boxes).
        cross_graph: the cross-graph relation encoder; False scores and trains the globals v̄·t̄ only.
        beta: β, the weight of the contexts spread along each modality's edges (0: none).
        heads: H of the multi-head similarity (None: the profile's).
        lambda_rec: λ_rec, the weight of the reconstruction loss (0: not built).
        global_aux: add the hinge on the globals v̄·t̄; needed by `rerank_k`.
        mask_same_image: pairs sharing a label are not negatives (off, as teran).
        word_span: teran's scored words: `drop_period` (default), `reference` or `all_words`.
        score_sides: S from both sides (docs/methods.md), or only the words' (`words`: mean_w cos(t_w, a'_w))
        or
            the regions' (`regions`) term: our diagnostic switch, not in docs/methods.md (read at scoring
            time).
        bert_path: the paper profile's BERT and tokenizer: a local folder or HF cache name (read offline).
        rerank_k: shortlist each query's top-k by v̄·t̄ and re-score it by S (a variant, recorded).
        optim: optimiser and schedule; default from the profile.
        loss_weights: weights of the loss terms `hinge`, `rec` (default λ_rec) and `global_hinge`.
        overrides, **fields: `RACGConfig` fields replacing the profile's.
    """

    name: ClassVar[str] = "racg"
    provenance: ClassVar[str] = PROVENANCE
    tasks: ClassVar[frozenset[str]] = frozenset({"text-image", "image-text"})

    def __init__(
        self,
        profile: str = "tiny",
        intra_graph: bool = True,
        spatial_edges: bool = True,
        cross_graph: bool = True,
        beta: float = 0.5,
        heads: int | None = None,
        lambda_rec: float = 0.1,
        global_aux: bool = False,
        mask_same_image: bool = False,
        word_span: str = "drop_period",
        score_sides: str = "both",
        bert_path: str = "bert-base-uncased",
        rerank_k: int | None = None,
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        values = merge_overrides(overrides, fields)
        if heads is not None:
            values = merge_overrides(values, {"heads": heads})
        hp = resolve_profile(PROFILES, profile, values, "racg")
        _check(hp, beta, lambda_rec, word_span, cross_graph, global_aux, rerank_k, loss_weights)
        weights = {"rec": lambda_rec, **(loss_weights or {})}
        super().__init__(
            profile=profile, optim=optim or self._optim(hp), loss_weights=weights, rerank_k=rerank_k
        )
        self.save_hyperparameters()
        self.hp = hp
        self.intra_graph, self.spatial_edges, self.cross_graph = intra_graph, spatial_edges, cross_graph
        self.beta = float(beta)
        self.lambda_rec = float(lambda_rec) if cross_graph else 0.0  # no contexts, no L_rec
        self.global_aux, self.mask_same_image, self.word_span = global_aux, mask_same_image, word_span
        if score_sides not in SIDES:
            raise ValueError(f"score_sides={score_sides!r}: expected one of {', '.join(SIDES)}")
        self.score_sides = score_sides
        self.bert_path = bert_path
        self.text_encoder: nn.Module | None = None
        self.cnn: nn.Module | None = None  # the region extractor over pixels; None on region features
        self.box_in: nn.Linear | None = None  # Linear 5 -> D of the box geometry; None without boxes
        self.text_graph: RelationGraph | None = None
        self.image_graph: RelationGraph | None = None
        self.rec_t: nn.Linear | None = None  # W_t of L_rec
        self.rec_v: nn.Linear | None = None  # W_v of L_rec
        self.region_source = ""  # grid, roi, precomp or butd; recorded in result.json
        self.sum_warmup = 0  # summed-hinge epochs, resolved from the profile and the data at build
        self.effective_spatial = spatial_edges  # off on data without boxes (precomp)
        self.register_buffer("punct", torch.zeros(0, dtype=torch.bool), persistent=False)

    @staticmethod
    def _optim(hp: RACGConfig) -> OptimConfig:
        return OptimConfig.from_profile(
            hp, lr_mult={"text_encoder.": hp.text_lr_mult} if hp.text_lr_mult != 1.0 else {}
        )

    # -- building --------------------------------------------------------------------------------------------
    def build(self, dm: RetrievalDataModule) -> None:
        """Text encoder (teran's), region extractor or region width, node projections, graphs, W_t / W_v."""
        if self.text_encoder is not None:
            return
        hp, dim = self.hp, self.hp.embed_dim
        tokenizer, self.text_encoder = _text_encoder(hp, self.bert_path, dm)
        self.punct = punctuation_table(tokenizer)
        width = region_dim(dm)
        source = getattr(dm, "feature_source", "images")
        if width is None:
            self.cnn = build_image_encoder(hp.image_encoder, **hp.image_kwargs)
            width = int(self.cnn.out_dim)
            roi = hp.roi_boxes and getattr(dm, "with_boxes", False) and isinstance(self.cnn, TinyCNN)
            self.region_source = "roi" if roi else "grid"
        else:
            self.region_source = source
        boxes = source != "precomp"
        self.effective_spatial = self.spatial_edges and boxes
        self.sum_warmup = summed_hinge_epochs(hp.sum_warmup_epochs, dm)
        self.text_in = nn.Linear(int(self.text_encoder.out_dim), dim)
        self.region_in = nn.Linear(width, dim)
        self.box_in = nn.Linear(5, dim) if boxes else None
        edges = self.cross_graph and self.beta > 0  # Â is needed by the spreading
        if self.intra_graph or edges:
            self.text_graph = RelationGraph(dim, hp.graph_layers, self.intra_graph)
            self.image_graph = RelationGraph(dim, hp.graph_layers, self.intra_graph)
        if self.lambda_rec > 0:
            self.rec_t, self.rec_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.processor = MethodProcessor(
            image_size=hp.image_size or dm.tiny_image_size,
            tokenizer=tokenizer,  # type: ignore[arg-type]
        )

    # -- encoders --------------------------------------------------------------------------------------------
    def text_nodes(self, text: Text) -> Nodes:
        """The word graph: unit word nodes of teran's scored window, mask, Â [B, W, W], unit global t̄."""
        assert self.text_encoder is not None, "call build(datamodule) first"
        ids, valid = text_inputs(text)
        x = self.text_in(self.text_encoder(text).tokens)
        x, words = scored_tokens(x, word_mask(ids, valid, self.word_span, self.punct), self.word_span)
        return self._graph(self.text_graph, x, words, None)

    def regions_of(self, visual: Visual) -> tuple[Tensor, Tensor | None, Tensor]:
        """(features [B, R, F], boxes [B, R, 4] or None, Bool mask [B, R]) from region data or pixels, as
        teran's (grid cells, RoI averages over the served boxes, precomp, butd)."""
        return region_inputs(visual, self.cnn, self.region_source, self.name)

    def image_nodes(self, visual: Visual) -> Nodes:
        """The region graph: unit region nodes [B, R, D] (zero where masked), mask, Â [B, R, R], unit v̄."""
        x, boxes, mask = self.regions_of(visual)
        return self.region_graph(x, boxes, mask)

    def region_graph(self, x: Tensor, boxes: Tensor | None, mask: Tensor) -> Nodes:
        """Nodes V0 = Linear(region) + Linear(box infos), then the image graph (with E_sp from the boxes)."""
        v = self.region_in(x)
        spatial = None
        if self.box_in is not None:
            if boxes is None:
                raise ValueError("racg was built on data with boxes, but the batch has none")
            v = v + self.box_in(box_infos(boxes.to(v.dtype)))
            if self.effective_spatial:
                spatial = spatial_edges(boxes, mask)
        return self._graph(self.image_graph, v, mask, spatial)

    def _graph(self, graph: RelationGraph | None, x: Tensor, mask: Tensor, spatial: Tensor | None) -> Nodes:
        adj = None
        if graph is not None:
            x, adj = graph(x, mask, spatial)
        x = zero_padding(F.normalize(x, dim=-1), mask)
        return Nodes(tok=x, mask=mask, adj=adj, glob=F.normalize(masked_mean(x, mask), dim=-1))

    # -- scoring ---------------------------------------------------------------------------------------------
    def relation(self, q: Nodes | Features, g: Nodes | Features, layout: str = "matrix") -> Tensor:
        """S of captions x images ([n_q, n_g]) or of aligned pairs ([n]) in this model's settings."""
        hp = self.hp
        beta = self.beta if self.text_graph is not None else 0.0
        return relation_scores(q, g, hp.heads, hp.attn_lambda, beta, layout, hp.score_chunk, self.score_sides)

    def score(self, q: Features, g: Features) -> Tensor:
        """S(caption, image) for a block; the globals' v̄·t̄ with cross-graph off or with `rerank_k`."""
        if self.rerank_k is not None or not self.cross_graph:
            return super().score(q, g)
        if self.hp.score_buckets:
            hp = self.hp
            beta = self.beta if self.text_graph is not None else 0.0
            return bucketed_relation_scores(
                q, g, hp.heads, hp.attn_lambda, beta, hp.score_chunk, self.score_sides
            )
        return self.relation(q, g)

    def score_pairs(self, q: Features, g: Features) -> Tensor:
        if self.rerank_k is not None or not self.cross_graph:
            return super().score_pairs(q, g)
        return self.relation(q, g, "pairs")

    def rescore_pairs(self, q: Features, g: Features) -> Tensor:
        """S of aligned pairs (the re-rank scorer of the shortlist)."""
        if not self.cross_graph:
            return super().score_pairs(q, g)
        return self.relation(q, g, "pairs")

    # -- training --------------------------------------------------------------------------------------------
    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        img, txt = self.image_nodes(batch.visual), self.text_nodes(batch.text)
        G = img.glob @ txt.glob.T
        S = self.relation(txt, img).T if self.cross_graph else G  # rows images, columns captions
        same = batch.label[:, None] == batch.label[None, :] if self.mask_same_image else None
        hardest = self.current_epoch >= self.sum_warmup
        terms = {"hinge": hardest_negative_triplet(S, self.hp.margin, hardest, positive_mask=same)}
        if self.global_aux:
            terms["global_hinge"] = hardest_negative_triplet(G, self.hp.margin, hardest, positive_mask=same)
        if self.rec_t is not None:
            terms["rec"] = self.reconstruction(txt, img).mean()
        return terms

    def reconstruction(self, txt: Nodes, img: Nodes) -> Tensor:
        """L_rec of each aligned (positive) pair [B]: mean_w (1 - cos(W_t a_w, sg(t_w))) + mean_r (1 -
        cos(W_v c_r, sg(v_r))); negatives never enter."""
        assert self.rec_t is not None and self.rec_v is not None
        with torch.autocast(txt.tok.device.type, enabled=False):
            a, c = contexts(txt.tok, txt.mask, img.tok, img.mask, self.hp.heads, self.hp.attn_lambda)
            rt = 1.0 - F.cosine_similarity(self.rec_t(a), txt.tok.detach().float(), dim=-1, eps=EPS)
            rv = 1.0 - F.cosine_similarity(self.rec_v(c), img.tok.detach().float(), dim=-1, eps=EPS)
        return masked_mean(rt[..., None], txt.mask)[:, 0] + masked_mean(rv[..., None], img.mask)[:, 0]

    @property
    def grad_clip_norm(self) -> float:
        """The recipe's gradient-norm clip (`grad_clip`, 2.0); the trainer's setting wins when given."""
        return self.hp.grad_clip

    # -- evaluation ------------------------------------------------------------------------------------------
    def _features(self, index: Tensor, nodes: Nodes, slots: int | None = None) -> Features:
        """Features for scoring: glob fp32; tok, and Â in `aux["adj"]` when the spreading uses it, stored in
        `store_dtype`; padded to `slots` nodes when given (gathering needs equal shapes)."""
        if not self.cross_graph:
            return Features(index=index, glob=nodes.glob.float())
        store = STORE_DTYPES[self.hp.store_dtype]
        tok, mask, adj = nodes.tok, nodes.mask, nodes.adj
        if slots is not None:
            if tok.shape[1] > slots:
                raise ValueError(f"racg: {tok.shape[1]} regions in a batch; raise max_regions (now {slots})")
            tok = F.pad(tok, (0, 0, 0, slots - tok.shape[1]))
            mask = F.pad(mask, (0, slots - mask.shape[1]), value=False)
            adj = _fit(adj, slots)
        aux = {"adj": adj.to(store)} if self.beta > 0 and adj is not None else {}
        return Features(index=index, glob=nodes.glob.float(), tok=tok.to(store), mask=mask, aux=aux)

    def encode_queries(self, batch: TextBatch) -> Features:
        return self._features(batch.index, self.text_nodes(batch.text))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        slots = None if self.region_source == "grid" else self.hp.max_regions  # region counts may vary
        return self._features(batch.index, self.image_nodes(batch.visual), slots)

    def pool_queries(self, q: Features, groups: Tensor) -> tuple[Features, Tensor]:
        raise ValueError(
            "racg: class-level protocols (class_reed) average caption embeddings, which its pairwise scorer "
            "does not define; run it on f30k, coco, synth-scenes or the person datasets"
        )

    def evaluate_features(self, q: Features, g: Features, spec: EvalSpec) -> EvalResult:
        """The evaluator's result, with the graph, scorer and region settings this run used."""
        result = super().evaluate_features(q, g, spec)
        result.details["racg"] = {
            "intra_graph": self.intra_graph,
            "spatial_edges": self.effective_spatial,
            "cross_graph": self.cross_graph,
            "beta": self.beta,
            "heads": self.hp.heads,
            "lambda_rec": self.lambda_rec,
            "global_aux": self.global_aux,
            "score_sides": self.score_sides,
            "sum_warmup_epochs": warmup_label(self.sum_warmup),
            "regions": self.region_source,
            "word_span": self.word_span,
            "scoring": "global" if not self.cross_graph else "exact" if self.rerank_k is None else "rerank",
        }
        return result


def _check(
    hp: RACGConfig,
    beta: float,
    lambda_rec: float,
    word_span: str,
    cross_graph: bool,
    global_aux: bool,
    rerank_k: int | None,
    loss_weights: dict[str, float] | None,
) -> None:
    """Errors naming the argument and what was expected."""
    allowed = [
        (word_span, WORD_SPANS, "word_span"),
        (hp.store_dtype, STORE_DTYPES, "store_dtype"),
        (hp.text_encoder, TEXT_ENCODERS, "text_encoder"),
    ]
    for value, names, what in allowed:
        if value not in names:
            raise ValueError(f"racg: {what} {value!r} is not one of {', '.join(names)}")
    rules = [
        (hp.heads >= 1 and hp.embed_dim % hp.heads == 0, f"heads={hp.heads} must divide embed_dim"),
        (0.0 <= beta <= 1.0, f"beta={beta} must lie in [0, 1]"),
        (lambda_rec >= 0.0, f"lambda_rec={lambda_rec} must be >= 0"),
        (0.0 < hp.attn_lambda <= 40.0, f"attn_lambda={hp.attn_lambda} must lie in (0, 40] (exp without max)"),
        (hp.graph_layers >= 1, f"graph_layers={hp.graph_layers} must be >= 1 (intra_graph=false drops them)"),
        (cross_graph or not global_aux, "global_aux trains v̄·t̄, which cross_graph=false already scores"),
        (cross_graph or rerank_k is None, "rerank_k re-scores by the cross-graph encoder, which is off"),
        (global_aux or rerank_k is None, "rerank_k shortlists by v̄·t̄, which only global_aux=true trains"),
        (rerank_k is None or rerank_k >= 1, f"rerank_k={rerank_k} must be >= 1"),
        ("rec" not in (loss_weights or {}), "loss_weights['rec'] is lambda_rec; set lambda_rec instead"),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"racg: {why}")


# the ablation switches of docs/methods.md §3, as `RACG` keyword arguments (used by the tests and docs)
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_intra_graph": {"intra_graph": False},
    "no_spatial_edges": {"spatial_edges": False},
    "beta0": {"beta": 0.0},
    "cross_graph_off": {"cross_graph": False},
    "heads1": {"heads": 1},
    "rec0": {"lambda_rec": 0.0},
    "rec1": {"lambda_rec": 1.0},
    "global_aux": {"global_aux": True},
}
