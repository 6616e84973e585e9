"""IRRA's similarity distribution matching (Jiang & Ye, CVPR 2023; anosorae/IRRA `objectives.compute_sdm`).

docs/methods.md §7: s_ij = f̂_t,i · f̂_v,j; q_ij = y_ij / Σ_k y_ik with y_ij = 1 iff i and j share an identity;
p_ij = softmax_j(s_ij / τ); L_t2i = (1/n) Σ_i Σ_j p_ij (log p_ij − log(q_ij + ε)); L_i2t the same on sᵀ;
SDM = L_t2i + L_i2t. Ported from the public code, except that q is normalised by its own row sum (the code
divides by the column's sum, which is the same for the symmetric y it builds).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sdm_from_logits(logits: Tensor, labels_matrix: Tensor, eps: float = 1e-8) -> Tensor:
    """One direction of SDM: mean over rows of KL(softmax(logits_i) ‖ q_i + ε).

    Args:
        logits: [n, m] scaled similarities (s / τ).
        labels_matrix: [n, m] bool or 0/1 matching matrix y; every row needs at least one positive.
        eps: ε inside log(q + ε), as in the code.
    """
    if logits.shape != labels_matrix.shape:
        raise ValueError(
            f"sdm_from_logits: labels_matrix shape {tuple(labels_matrix.shape)} "
            f"!= logits shape {tuple(logits.shape)}"
        )
    y = labels_matrix.to(logits.dtype)
    q = y / y.sum(dim=1, keepdim=True)
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - (q + eps).log())).sum(dim=1).mean()


def sdm(text: Tensor, image: Tensor, labels: Tensor, tau: float | Tensor = 0.02, eps: float = 1e-8) -> Tensor:
    """SDM = L_t2i + L_i2t for a batch of n (caption, image) pairs with identity `labels` (Long[n]).

    Features are L2-normalised here; pairs of the same identity are positives in both directions.
    """
    if not text.shape[0] == image.shape[0] == labels.shape[0]:
        raise ValueError(
            f"sdm: text ({text.shape[0]}), image ({image.shape[0]}) and labels ({labels.shape[0]}) "
            "must have the same length"
        )
    logits = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T / tau
    y = labels[:, None] == labels[None, :]
    return sdm_from_logits(logits, y, eps) + sdm_from_logits(logits.T, y.T, eps)
