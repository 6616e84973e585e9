"""Hinge (triplet) ranking loss with hardest negatives: VSE++ (Faghri et al., BMVC 2018; fartashf/vsepp
`ContrastiveLoss`) as also used by TERAN (mesnico/TERAN). docs/methods.md §2 and §8; ported from the public
code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hardest_negative_triplet(
    S: Tensor, margin: float = 0.2, max_violation: bool = True, positive_mask: Tensor | None = None
) -> Tensor:
    """Σ_i [α − S_ii + max_{j≠i} S_ij]₊ + Σ_j [α − S_jj + max_{i≠j} S_ij]₊, summed over the batch.

    Args:
        S: [B, B] scores, rows images, columns captions, positives on the diagonal.
        margin: α.
        max_violation: True for the hardest negative (VSE++); False sums the hinge over all negatives (VSE0).
        positive_mask: optional Bool[B, B], extra pairs that are not negatives (e.g. captions of the same
            image in the batch; TERAN's `mask_same_image`). Off by default, as in both codes.
    """
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"hardest_negative_triplet: S must be a square [B, B] matrix, got {tuple(S.shape)}")
    diag = S.diagonal()
    not_negative = torch.eye(S.shape[0], dtype=torch.bool, device=S.device)
    if positive_mask is not None:
        not_negative = not_negative | positive_mask
    # cost_caption[i, j]: image i ranks caption j; cost_image[i, j]: caption j ranks image i.
    cost_caption = (margin + S - diag[:, None]).clamp(min=0).masked_fill(not_negative, 0)
    cost_image = (margin + S - diag[None, :]).clamp(min=0).masked_fill(not_negative, 0)
    if max_violation:
        return cost_caption.amax(dim=1).sum() + cost_image.amax(dim=0).sum()
    return cost_caption.sum() + cost_image.sum()
