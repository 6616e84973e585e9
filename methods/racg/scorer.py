"""RACG's cross-graph relation encoder and multi-head node similarity (docs/methods.md §3; our reading, see
`methods.racg`): the per-pair Gram form (`relation_block`), the block form (`relation_matrix`), their chunk
loops and the length-bucketed evaluation scorer."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fgbench.encoders.layers import masked_softmax
from fgbench.features import Features, cut_padding, length_buckets
from fgbench.pairwise import chunked_matrix, chunked_pairs

from .graph import EPS, Nodes

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


class Side(NamedTuple):
    """One side of a block as scored: unit nodes [n, N, D], Bool mask [n, N], Â [n, N, N] or None."""

    tok: Tensor
    mask: Tensor
    adj: Tensor | None

    def rows(self, sl: slice) -> Side:
        return Side(self.tok[sl], self.mask[sl], None if self.adj is None else self.adj[sl])


class Relation(NamedTuple):
    """The scorer's settings: H heads, the attention's λ, the spreading's β, the sides S averages."""

    heads: int
    lam: float
    beta: float
    sides: str = "both"


def _spread(x: Tensor, adj: Tensor | None, beta: float, eq: str) -> Tensor:
    """(1 - β) x + β Â x along one modality's nodes (identity when β = 0 or there is no Â)."""
    if beta == 0.0 or adj is None:
        return x
    return (1.0 - beta) * x + beta * torch.einsum(eq, adj.float(), x)


def relation_block(q: Side, g: Side, rel: Relation) -> Tensor:
    """S [n] of aligned pairs (caption i with image i; the re-rank's pairs) by the Gram-matrix form (fp32);
    `relation_matrix` is the same function for blocks of captions x images (tests check both by brute force).

    With π' the attention spread along the caption's Â (a'_w = Σ_r π'_wr vʰ_r): tʰ_w·a'_w = Σ_r π'_wr P_wr and
    ‖a'_w‖² = π'_wᵀ (Vʰ Vʰᵀ) π'_w; likewise c'_r with ρ' spread along the image's Â and Tʰ Tʰᵀ.
    """
    (words, wmask, wadj), (regions, rmask, radj) = q, g
    heads, lam, beta, sides = rel
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


def relation_matrix(q: Side, g: Side, rel: Relation) -> Tensor:
    """[n_q, n_g] S of one block, the same function as `relation_block` in fewer passes over its tensors.

    The [H, n_q, W, n_g, R] tensors are laid out so that every product is one batched matmul: word-side
    products (the spreading along the caption's Â, the Gram form of ‖c'_r‖) batch over captions, region-side
    ones over images. Two facts save passes: the logits are λ·cos in [-λ, λ], so exp(λ(cos - 1)) needs no
    max-subtraction (`attn_lambda` is capped at 40: no underflow of a whole row); and cos(t_w, a'_w) does not
    change when a row of π' is scaled, so without the spreading (β = 0) the softmax needs no normalisation.
    """
    (words, wmask, wadj), (regions, rmask, radj) = q, g
    heads, lam, beta, sides = rel
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


def fit_adjacency(adj: Tensor | None, n: int) -> Tensor | None:
    """Â zero-padded (or cut) to n nodes, so token sets padded after encoding keep their edges."""
    if adj is None or adj.shape[-1] == n:
        return adj
    if adj.shape[-1] > n:
        return adj[:, :n, :n]
    return F.pad(adj, (0, n - adj.shape[-1], 0, n - adj.shape[-1]))


def _trim(x: Tensor, mask: Tensor, adj: Tensor | None) -> Side:
    """Cut a block's node sets after its last valid node (exact: later nodes are masked)."""
    adj = fit_adjacency(adj, x.shape[1])
    x, mask = cut_padding(x, mask)
    n = mask.shape[1]
    return Side(x, mask, None if adj is None else adj[:, :n, :n])


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
    qs, gs = _trim(q.tok, q.mask, qa if beta else None), _trim(g.tok, g.mask, ga if beta else None)
    rel = Relation(heads, lam, beta, sides)
    n_q, n_g, device = len(qs.tok), len(gs.tok), qs.tok.device
    per_pair = heads * qs.tok.shape[1] * gs.tok.shape[1]
    with torch.autocast(device.type, enabled=False):
        if layout == "pairs":
            return chunked_pairs(
                lambda p: relation_block(qs.rows(p), gs.rows(p), rel), n_q, per_pair, chunk, device
            )
        return chunked_matrix(
            lambda i, j: relation_matrix(qs.rows(i), gs.rows(j), rel), n_q, n_g, per_pair, chunk, device
        )


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
    qa, ga = (fit_adjacency(qa, q.tok.shape[1]), fit_adjacency(ga, g.tok.shape[1])) if beta else (None, None)

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
