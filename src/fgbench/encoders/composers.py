"""Composition functions of composed image retrieval: one query feature from a reference image's feature and a
modification text's feature (docs/methods.md §9, §4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedResidualComposer(nn.Module):
    """f = a0·σ(gate(x))⊙φ_img + a1·res(x), x = [φ_img; φ_txt] (docs/methods.md §9).

    [code] google/tirg `TIRG` (img_text_composition_models.py): gate and res each start with their own
    BatchNorm over x; (a0, a1) are learnable from `init_a` (the code: (1, 10)). Used by tirg and by nsfse's
    composition of the global features.
    """

    def __init__(self, dim: int, init_a: tuple[float, float]) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.BatchNorm1d(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.res = nn.Sequential(
            nn.BatchNorm1d(2 * dim),
            nn.ReLU(),
            nn.Linear(2 * dim, 2 * dim),
            nn.ReLU(),
            nn.Linear(2 * dim, dim),
        )
        self.a = nn.Parameter(torch.tensor(init_a, dtype=torch.float32))

    def forward(self, img: Tensor, txt: Tensor) -> Tensor:
        x = torch.cat([img, txt], dim=-1)
        return self.a[0] * torch.sigmoid(self.gate(x)) * img + self.a[1] * self.res(x)
