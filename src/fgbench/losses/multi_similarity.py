"""NSFSE's negative-sensitive term: a Multi-Similarity loss (Wang et al., CVPR 2019) around a threshold θ
(Wang et al., IEEE TMM 26:7608-7621, 2024), docs/methods.md §4.

Re-implementation from the paper's description: NSFSE has no public code, and its threshold design and loss
form are our reading [inf], the least certain part of docs/methods.md (§11).

    L_ns = (1/B) Σ_i [(1/a)·log(1 + Σ_{k∈P_i} e^{−a(S_ik−θ)}) + (1/b)·log(1 + Σ_{j∈N_i} e^{b(S_ij−θ)})]

Dynamic θ: the equal-z point θ = (σ_n μ_p + σ_p μ_n)/(σ_p + σ_n) of the positive scores S_ii and the negative
scores, from per-batch statistics smoothed by an EMA, without gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

NegStats = Literal["all", "top5"]


def multi_similarity_ns(
    S: Tensor, pos_mask: Tensor, theta: float | Tensor, a: float = 2.0, b: float = 50.0
) -> Tensor:
    """L_ns on a [B, N] score matrix; `pos_mask` Bool[B, N] marks P_i (the diagonal plus same-target items),
    every other entry is in N_i. log(1 + Σ e^x) is computed as a logsumexp with a zero term, so it is stable.
    """
    if pos_mask.shape != S.shape:
        raise ValueError(f"multi_similarity_ns: pos_mask shape {tuple(pos_mask.shape)} != S {tuple(S.shape)}")
    zero = S.new_zeros(S.shape[0], 1)
    pos = (-a * (S - theta)).masked_fill(~pos_mask, float("-inf"))
    neg = (b * (S - theta)).masked_fill(pos_mask, float("-inf"))
    pos_term = torch.logsumexp(torch.cat([zero, pos], dim=1), dim=1) / a
    neg_term = torch.logsumexp(torch.cat([zero, neg], dim=1), dim=1) / b
    return (pos_term + neg_term).mean()


@torch.no_grad()
def score_stats(S: Tensor, pos_mask: Tensor | None = None, neg_stats: NegStats = "all") -> Tensor:
    """[μ_p, σ_p, μ_n, σ_n] (population std) of the positives S_ii and the negatives of a [B, B] batch.

    Negatives are the entries outside `pos_mask` (default: off-diagonal); `neg_stats="top5"` keeps only the 5
    highest of each row.
    """
    eye = torch.eye(S.shape[0], S.shape[1], dtype=torch.bool, device=S.device)
    not_negative = eye if pos_mask is None else eye | pos_mask
    # negatives as a mask, not selected by boolean indexing: that waits for the GPU (a sync per step)
    if neg_stats == "all":
        negatives, keep = S, ~not_negative
    elif neg_stats == "top5":
        negatives = S.masked_fill(not_negative, float("-inf")).topk(min(5, S.shape[1]), dim=1).values
        keep = negatives.isfinite()
    else:
        raise ValueError(f"score_stats: neg_stats must be 'all' or 'top5', got {neg_stats!r}")
    positives = S.diagonal()
    return torch.stack([positives.mean(), positives.std(correction=0), *_masked_mean_std(negatives, keep)])


def _masked_mean_std(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population std of the entries of `x` under `keep` (NaN when there is none)."""
    n = keep.sum().to(x.dtype)
    vals = torch.where(keep, x, torch.zeros_like(x))
    mean = vals.sum() / n
    var = torch.where(keep, (x - mean).square(), torch.zeros_like(x)).sum() / n
    return mean, var.sqrt()


def equal_z_threshold(stats: Tensor) -> Tensor:
    """θ = (σ_n μ_p + σ_p μ_n)/(σ_p + σ_n) from [μ_p, σ_p, μ_n, σ_n]; the midpoint when both σ are 0.

    θ is the point at equal z-score from both means, so it lies between μ_n and μ_p.
    """
    mu_p, sigma_p, mu_n, sigma_n = stats.unbind()
    spread = sigma_p + sigma_n
    weight_p = torch.where(spread > 0, sigma_n / torch.where(spread > 0, spread, 1.0), 0.5)
    return mu_n + (mu_p - mu_n) * weight_p


class DynamicThreshold(nn.Module):
    """NSFSE's threshold θ for `multi_similarity_ns`, kept as a buffer (docs/methods.md §4).

    `mode="dynamic"`: in training, each call updates EMA statistics (stats ← m·stats + (1−m)·batch, the first
    batch taken as is; `ema=False` uses the batch alone) and θ = `equal_z_threshold(stats)`. In eval mode the
    stored θ is returned unchanged (`fixed_theta` until the first training batch).
    `mode="fixed"`: θ = `fixed_theta` always.
    """

    theta: Tensor
    stats: Tensor
    num_updates: Tensor

    def __init__(
        self,
        mode: Literal["dynamic", "fixed"] = "dynamic",
        neg_stats: NegStats = "all",
        ema: bool = True,
        momentum: float = 0.9,
        fixed_theta: float = 0.5,
    ) -> None:
        super().__init__()
        if mode not in ("dynamic", "fixed"):
            raise ValueError(f"DynamicThreshold: mode must be 'dynamic' or 'fixed', got {mode!r}")
        if neg_stats not in ("all", "top5"):
            raise ValueError(f"DynamicThreshold: neg_stats must be 'all' or 'top5', got {neg_stats!r}")
        self.mode, self.neg_stats, self.ema, self.momentum = mode, neg_stats, ema, momentum
        self.register_buffer("theta", torch.tensor(fixed_theta))
        self.register_buffer("stats", torch.zeros(4))  # EMA of [μ_p, σ_p, μ_n, σ_n]
        self.register_buffer("num_updates", torch.tensor(0))

    @torch.no_grad()
    def forward(self, S: Tensor, pos_mask: Tensor | None = None) -> Tensor:
        """θ for this batch (a detached scalar); updates the statistics in training, dynamic mode only."""
        if self.mode == "dynamic" and self.training:
            batch = score_stats(S, pos_mask, self.neg_stats).to(self.stats)
            if self.ema:  # the first batch as is; torch.where, as `if num_updates > 0` would sync
                smoothed = self.momentum * self.stats + (1.0 - self.momentum) * batch
                batch = torch.where(self.num_updates > 0, smoothed, batch)
            self.stats.copy_(batch)
            self.num_updates += 1
            self.theta.copy_(equal_z_threshold(self.stats))
        return self.theta.clone()

    def extra_repr(self) -> str:
        return f"mode={self.mode}, neg_stats={self.neg_stats}, ema={self.ema}, momentum={self.momentum}"
