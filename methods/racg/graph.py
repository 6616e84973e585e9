"""RACG's semantic-embedded graphs (docs/methods.md §3; our reading, see `methods.racg`): spatial edges from
box IoU, intra-graph relation layers, and a modality's encoded node set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.encoders.layers import masked_softmax
from fgbench.encoders.regions import box_infos

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


@dataclass
class Nodes:
    """One modality's encoded graph: unit nodes [B, N, D] (zero where masked), mask, Â, unit global."""

    tok: Tensor
    mask: Tensor
    adj: Tensor | None  # the last Â [B, N, N] (float32); None without a graph
    glob: Tensor
