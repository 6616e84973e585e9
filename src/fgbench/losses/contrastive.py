"""In-batch contrastive losses over a query x gallery batch whose diagonal holds the positives.

- `infonce`: CLIP's symmetric InfoNCE (Radford et al., ICML 2021; as in mlfoundations/open_clip `ClipLoss`),
  the `clip_ft` loss of docs/methods.md §5. Items of the same identity in a batch count as negatives, by
  design: that is the one difference from SDM (§7).
- `batch_classification`: TIRG's batch-based classification loss (google/tirg,
  `compute_batch_based_classification_loss_`) and CLIP4Cir's CE(100·q gᵀ) (ABaldrati/CLIP4Cir),
  docs/methods.md §9, §5 and §10. Details from the public code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def infonce(
    a: Tensor,
    b: Tensor,
    logit_scale: float | Tensor | None = None,
    *,
    temperature: float | Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE ½[CE(S, y) + CE(Sᵀ, y)], S = â b̂ᵀ · scale on L2-normalised features
    (docs/methods.md §5).

    Give exactly one of `logit_scale` (a multiplier, e.g. a learnable `logit_scale.exp()`, clamped by the
    caller) or `temperature` (scale = 1/temperature).

    Args:
        a: [B, d] features of one modality (rows of S).
        b: [N, d] features of the other modality (columns of S); N = B unless `labels` is given.
        labels: Long[B], the index in `b` of each row's positive; default the diagonal (arange(B)). With
            N > B, `b` may carry extra negatives (e.g. gathered from other devices); the b->a term then runs
            over the positive rows of `b` against the B rows of `a`.
    """
    if (logit_scale is None) == (temperature is None):
        raise ValueError("infonce: give exactly one of logit_scale and temperature")
    if logit_scale is None:
        logit_scale = 1.0 / temperature
    n = a.shape[0]
    if labels is None:
        if b.shape[0] != n:
            raise ValueError(f"infonce: a has {n} rows and b {b.shape[0]}; pass labels when they differ")
        labels = torch.arange(n, device=a.device)
    elif labels.shape != (n,):
        raise ValueError(f"infonce: labels must have shape ({n},), got {tuple(labels.shape)}")
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    rows = torch.arange(n, device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T[labels], rows))


def batch_classification(
    q: Tensor, g: Tensor, scale: float | Tensor = 1.0, exclude: Tensor | None = None
) -> Tensor:
    """CE(scale · q gᵀ, diagonal): each query classifies its own target among the batch's targets.

    The features are used as given: TIRG passes vectors already scaled by its learnable norm s (scale = 1),
    CLIP4Cir passes unit vectors with scale = 100. `scale` may be a learnable tensor. `exclude` (Bool[B, B],
    e.g. `same_target_mask`) leaves those columns out of each row's softmax.
    """
    if q.shape[0] != g.shape[0]:
        raise ValueError(f"batch_classification: q has {q.shape[0]} rows and g {g.shape[0]}; expected equal")
    return diagonal_cross_entropy(scale * q @ g.T, exclude)


def diagonal_cross_entropy(logits: Tensor, exclude: Tensor | None = None) -> Tensor:
    """CE(logits, diagonal) over a [B, B] batch score matrix: row i's class is column i; `exclude`
    (Bool[B, B], e.g. `same_target_mask`) leaves those columns out of the row's softmax (-inf logits).

    The one form of the batch's classification loss: `batch_classification` (TIRG, CLIP4Cir) and NSFSE's L_bbc
    over its pairwise scores.
    """
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def same_target_mask(labels: Tensor) -> Tensor:
    """Bool[B, B]: other items of the batch with the same target (the diagonal excluded)."""
    same = labels[:, None] == labels[None, :]
    return same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
