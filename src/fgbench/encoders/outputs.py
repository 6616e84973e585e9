"""Encoder output dataclasses shared by every image and text encoder (docs/methods.md, "Common interface").

Masks are True for valid positions. Token tensors are zero at padded positions, so a method that forgets the
mask still sees no contribution from padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ImageOutput:
    """What an image encoder returns: a global vector and, optionally, a token / grid / region set."""

    glob: Tensor  # [B,D]
    tokens: Tensor | None = None  # [B,T,D]
    mask: Tensor | None = None  # Bool[B,T], True = valid
    boxes: Tensor | None = None  # [B,T,4] normalised x1,y1,x2,y2 of each token


@dataclass
class TextOutput:
    """What a text encoder returns: a sentence vector and the per-token features."""

    glob: Tensor  # [B,D]
    tokens: Tensor | None = None  # [B,L,D]
    mask: Tensor | None = None  # Bool[B,L], True = valid
