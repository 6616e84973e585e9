"""NSFSE's enhanced score (docs/methods.md §4): s_vis and s_cross of a query's word and context sets against a
candidate's grid, by the Gram shortcut, for all pairs or aligned pairs, in memory-bounded chunks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fgbench.encoders.layers import masked_softmax
from fgbench.pairwise import chunk_grid

EPS = 1e-8  # floor of a norm


@dataclass
class QuerySets:
    """The query side of the enhanced score (fp32)."""

    words: Tensor  # W̃ [n, L, d]: infused word features
    word_mask: Tensor  # Bool[n, L]
    text: Tensor  # t̂ [n, d]: unit sentence vector
    context: Tensor  # ρ [n, d]: text-guided reference context

    def slice(self, sl: slice) -> QuerySets:
        return QuerySets(self.words[sl], self.word_mask[sl], self.text[sl], self.context[sl])


@dataclass
class CandidateSets:
    """The candidate side of the enhanced score (fp32), with its per-candidate statistics once `prepared`."""

    grid: Tensor  # V_c [n, N, d]
    grid_mask: Tensor  # Bool[n, N]
    inv_norm: Tensor | None = None  # 1/‖V_c,n‖ [n, N]
    gram: Tensor | None = None  # V_c V_cᵀ [n, N, N]

    def prepared(self) -> CandidateSets:
        """These sets with `inv_norm` and `gram` computed (once per gallery block, not per query chunk)."""
        if self.inv_norm is not None and self.gram is not None:
            return self
        V = self.grid
        return CandidateSets(V, self.grid_mask, 1.0 / safe_norm(V), V @ V.transpose(1, 2))

    def slice(self, sl: slice) -> CandidateSets:
        pick = (t if t is None else t[sl] for t in (self.inv_norm, self.gram))
        return CandidateSets(self.grid[sl], self.grid_mask[sl], *pick)


# einsum layouts: "matrix" scores every query against every candidate, "pairs" aligned pairs
_EQ = {
    "matrix": {
        "words": "qld,gnd->qgln",
        "gram_l": "qgln,gnm->qglm",
        "vec": "qd,gnd->qgn",
        "gram": "qgn,gnm->qgm",
    },
    "pairs": {"words": "pld,pnd->pln", "gram_l": "pln,pnm->plm", "vec": "pd,pnd->pn", "gram": "pn,pnm->pm"},
}


def safe_norm(x: Tensor, dim: int = -1) -> Tensor:
    return x.norm(dim=dim).clamp_min(EPS)


def enhanced_terms(
    qs: QuerySets, cs: CandidateSets, lam: float, terms: Sequence[str], layout: str = "matrix"
) -> dict[str, Tensor]:
    """s_vis and/or s_cross (docs/methods.md §4), [n_q, n_c] ("matrix") or [n] ("pairs"), via the Gram
    shortcut.

    With P_ln = ŵ̃_l·V_c,n: ŵ̃_l·c_l = Σ_n α_ln P_ln and ‖c_l‖² = α_lᵀ G α_l, G = V_c V_cᵀ; likewise for κ.
    """
    eq = _EQ[layout]
    matrix = layout == "matrix"

    def qv(x: Tensor) -> Tensor:  # a per-query tensor, broadcast over candidates
        return x[:, None] if matrix else x

    def gv(x: Tensor) -> Tensor:  # a per-candidate tensor, broadcast over queries
        return x[None] if matrix else x

    cs = cs.prepared()
    V, vmask, inv, gram = cs.grid, cs.grid_mask, cs.inv_norm, cs.gram
    assert inv is not None and gram is not None
    out: dict[str, Tensor] = {}
    if "cross" in terms:
        P = torch.einsum(eq["words"], F.normalize(qs.words, dim=-1, eps=EPS), V)  # [.., L, N]
        alpha = masked_softmax(lam * P * gv(inv)[..., None, :], gv(vmask)[..., None, :])
        num = (alpha * P).sum(-1)  # ŵ̃_l · c_l
        sq = (torch.einsum(eq["gram_l"], alpha, gram) * alpha).sum(-1)  # ‖c_l‖²
        cos = num / sq.clamp_min(EPS * EPS).sqrt()
        m = qv(qs.word_mask).to(cos.dtype)
        out["cross"] = (cos * m).sum(-1) / m.sum(-1).clamp_min(1.0)
    if "vis" in terms:
        gamma = masked_softmax(lam * torch.einsum(eq["vec"], qs.text, V) * gv(inv), gv(vmask))
        num = (gamma * torch.einsum(eq["vec"], qs.context, V)).sum(-1)  # ρ · κ
        sq = (torch.einsum(eq["gram"], gamma, gram) * gamma).sum(-1)  # ‖κ‖²
        out["vis"] = num / (sq.clamp_min(EPS * EPS).sqrt() * qv(safe_norm(qs.context)))
    return out


def slots_per_pair(qs: QuerySets, cs: CandidateSets) -> int:
    """Elements of one (query, candidate) pair's [L, N] tensors, what a chunk's `budget` counts."""
    return qs.words.shape[1] * max(cs.grid.shape[1], 1)


def matrix_terms(
    qs: QuerySets, cs: CandidateSets, lam: float, terms: Sequence[str], budget: int
) -> dict[str, Tensor]:
    """`enhanced_terms` of every query against every candidate, [n_q, n_c], in blocks of query rows x
    candidate columns within `budget` (`fgbench.pairwise.chunk_grid`)."""
    if not terms:
        return {}
    cs = cs.prepared()
    nc = len(cs.grid)
    rows, cols = chunk_grid(len(qs.words), nc, slots_per_pair(qs, cs), budget)
    out_rows: list[dict[str, Tensor]] = []
    for i in range(0, len(qs.words), rows):
        q = qs.slice(slice(i, i + rows))
        blocks = [enhanced_terms(q, cs.slice(slice(j, j + cols)), lam, terms) for j in range(0, nc, cols)]
        out_rows.append({t: torch.cat([b[t] for b in blocks], dim=1) for t in terms})
    return {t: torch.cat([r[t] for r in out_rows]) for t in terms}


def pair_terms(
    qs: QuerySets, cs: CandidateSets, lam: float, terms: Sequence[str], budget: int
) -> dict[str, Tensor]:
    """`enhanced_terms` of aligned pairs (query i with candidate i), [n], in runs of pairs within `budget`."""
    if not terms:
        return {}
    cs = cs.prepared()
    pairs = max(1, budget // slots_per_pair(qs, cs))
    runs = [slice(i, i + pairs) for i in range(0, len(qs.words), pairs)]
    parts = [enhanced_terms(qs.slice(sl), cs.slice(sl), lam, terms, "pairs") for sl in runs]
    return {t: torch.cat([p[t] for p in parts]) for t in terms}
