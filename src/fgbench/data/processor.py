"""Processors: a method's tokenizer and image transforms, attached to the DataModule before fitting.

The DataModule applies `image_transform` in its datasets and `tokenize` in its collate functions, so both
run in the loader workers (docs/architecture.md, step 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor


@runtime_checkable
class Processor(Protocol):
    """What a DataModule needs from a method's processor."""

    def image_transform(self, train: bool) -> Callable[[Image.Image], Tensor]: ...

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor] | None: ...


@dataclass
class BasicProcessor:
    """Resize to a fixed (height, width), scale to [0,1], normalise; no tokenisation (captions stay strings).

    The default when no method processor is attached (data checks, tests, previews).
    """

    image_size: tuple[int, int] = (64, 64)  # (height, width)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def image_transform(self, train: bool) -> Callable[[Image.Image], Tensor]:
        h, w = self.image_size
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)

        def transform(img: Image.Image) -> Tensor:
            img = img.convert("RGB").resize((w, h), Image.BILINEAR)
            x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3)
            x = x.permute(2, 0, 1).float().div_(255.0)
            return (x - mean) / std

        return transform

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor] | None:
        return None
