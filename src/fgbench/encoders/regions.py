"""Precomputed region features (bottom-up attention, or the tiny grid cells) with box positional encoding, as
TERAN's `PositionalEncodingImageBoxes` (mesnico/TERAN; docs/methods.md §2), followed by a Linear projection to
d.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from fgbench.data.batches import Visual
from fgbench.encoders.layers import masked_mean, pixels_of, zero_padding
from fgbench.encoders.outputs import ImageOutput
from fgbench.encoders.registry import register_image_encoder
from fgbench.encoders.timm_backbone import roi_pool

if TYPE_CHECKING:
    from fgbench.data.module import DataInfo
    from fgbench.encoders.config import ImageTowerConfig

PosEncoding = Literal["concat-and-process", "project-and-sum", "none"]


def box_infos(boxes: Tensor) -> Tensor:
    """[x1, y1, x2, y2, area] of normalised boxes [B,R,4] -> [B,R,5]."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return torch.cat([boxes, area.unsqueeze(-1)], dim=-1)


class ConcatAndProcess(nn.Module):
    """TERAN `concat-and-process`: Linear(D+5 -> D), ReLU, Linear(D -> D) on [features; box infos]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.map = nn.Sequential(nn.Linear(dim + 5, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, x: Tensor, boxes: Tensor) -> Tensor:
        return self.map(torch.cat([x, box_infos(boxes)], dim=-1))


class ProjectAndSum(nn.Module):
    """TERAN `project-and-sum`: features + Linear(5 -> D)(box infos)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.map = nn.Linear(5, dim)

    def forward(self, x: Tensor, boxes: Tensor) -> Tensor:
        return x + self.map(box_infos(boxes))


# pos_encoding name -> (feature width) -> the box encoding module, None for `none`
POS_ENCODINGS: dict[str, Callable[[int], nn.Module | None]] = {
    "concat-and-process": ConcatAndProcess,
    "project-and-sum": ProjectAndSum,
    "none": lambda dim: None,
}


def region_mask_of(visual: Visual) -> Tensor:
    """Bool [B, R] mask of the batch's region features `visual.regions` (all valid when it ships none)."""
    assert visual.regions is not None
    if visual.region_mask is not None:
        return visual.region_mask
    return torch.ones(visual.regions.shape[:2], dtype=torch.bool, device=visual.regions.device)


def region_inputs(
    visual: Visual, cnn: nn.Module | None, region_source: str, method: str
) -> tuple[Tensor, Tensor | None, Tensor]:
    """A region scorer's inputs (features [B, R, F], boxes [B, R, 4] or None, Bool mask [B, R]): the batch's
    region features (precomp, butd), or from pixels the extractor `cnn`'s grid cells or, for `roi`, its
    feature map averaged over the boxes served with the images. `method` names the caller in errors."""
    if cnn is None:
        if visual.regions is None:
            raise ValueError(f"{method} was built on region features (precomp / butd) but the batch has none")
        return visual.regions, visual.boxes, region_mask_of(visual)
    if visual.pixels is None:
        raise ValueError(f"{method} was built on images (region extractor) but the batch has region features")
    if region_source == "roi":
        if visual.boxes is None or visual.region_mask is None:
            raise ValueError(f"{method} was built for RoI regions (roi_boxes) but the batch has no boxes")
        fmap = cnn.body(pixels_of(visual))  # type: ignore[operator]
        return (
            zero_padding(roi_pool(fmap, visual.boxes), visual.region_mask),
            visual.boxes,
            visual.region_mask,
        )
    out = cnn(visual)
    assert out.tokens is not None and out.mask is not None
    return out.tokens, out.boxes, out.mask


@register_image_encoder("regions")
class RegionEncoder(nn.Module):
    """Region features [B,R,in_dim] + boxes -> positional encoding -> Linear to `dim` (identity if None).

    tokens = the encoded regions (zero at padded slots), glob = their masked mean, boxes passed through.

    Example:
        >>> enc = RegionEncoder(in_dim=2048, dim=1024, pos_encoding="concat-and-process")
        >>> enc(Visual(regions=r, boxes=b, region_mask=m)).tokens.shape  # [B, 36, 1024]
    """

    def __init__(
        self, *, in_dim: int = 2048, dim: int | None = None, pos_encoding: PosEncoding = "none"
    ) -> None:
        super().__init__()
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding {pos_encoding!r}: expected one of {', '.join(POS_ENCODINGS)}")
        self.pos = POS_ENCODINGS[pos_encoding](in_dim)
        self.proj = nn.Linear(in_dim, dim) if dim is not None else nn.Identity()
        self.out_dim = in_dim if dim is None else dim

    def forward(self, visual: Visual) -> ImageOutput:
        if visual.regions is None:
            raise ValueError("Visual.regions is None: the regions encoder needs precomputed region features")
        x, mask = visual.regions, region_mask_of(visual)
        if self.pos is not None:
            if visual.boxes is None:
                raise ValueError("Visual.boxes is None: pos_encoding needs the region boxes (or use 'none')")
            x = self.pos(x, visual.boxes.to(x.dtype))
        tokens = zero_padding(self.proj(x), mask)
        return ImageOutput(glob=masked_mean(tokens, mask), tokens=tokens, mask=mask, boxes=visual.boxes)


def region_extractor(
    data: DataInfo, tower: ImageTowerConfig, roi_boxes: bool
) -> tuple[nn.Module | None, int, str]:
    """(pixel region extractor or None, region width, region source) of a region-set method on `data`.

    Precomputed region features (`precomp`, `butd`) need no extractor: their width is the data's and the
    source its feature source. On pixels, the `tower`'s encoder extracts the regions: its grid cells
    (`grid`), or, for the tiny CNN when the data serves boxes and `roi_boxes` is set, RoI averages over those
    boxes (`roi`).
    """
    if data.region_dim is not None:
        return None, data.region_dim, data.feature_source
    from fgbench.encoders.tiny import TinyCNN  # tiny registers its encoders through this package

    cnn = tower.build()
    roi = roi_boxes and data.with_boxes and isinstance(cnn, TinyCNN)
    return cnn, int(cnn.out_dim), "roi" if roi else "grid"
