"""The image tower of a method's hyper-parameters, one nested config dataclass every method shares.

`ImageTowerConfig` names the image encoder and its arguments, the input size, the pixel normalisation and the
train/test transform presets. A profile override reaches its fields as `{image: {size: [384, 128]}}` (merged
into the preset's value field by field, `fgbench.profiles`). `build` makes the encoder and `processor` the
`MethodProcessor` that feeds it, so no method spells out either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fgbench.encoders.processors import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, MethodProcessor
from fgbench.encoders.registry import build_image_encoder
from fgbench.encoders.tokenizers import Tokenizer
from fgbench.errors import ConfigError

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]
# `ImageTowerConfig.norm` -> (mean, std) of the pixel normalisation
NORMALISATIONS: dict[str, Stats] = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # towers trained from scratch
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # ImageNet-pretrained CNNs
    "clip": (CLIP_MEAN, CLIP_STD),  # CLIP's image tower
}


@dataclass
class ImageTowerConfig:
    """Image encoder, input size, normalisation and transforms of one profile; every field has a default."""

    encoder: str = "tiny_cnn"  # fgbench image encoder (build_image_encoder name)
    kwargs: dict[str, Any] = field(default_factory=dict)  # its arguments (timm: model_name)
    size: tuple[int, int] | None = None  # processor (H, W); None: the DataModule's tiny size
    norm: str = "half"  # key of NORMALISATIONS: pixel mean/std
    train_transform: str = "none"  # processor preset at training time (TRANSFORM_PRESETS)
    test_transform: str = "none"  # processor preset at test time

    def __post_init__(self) -> None:
        if self.norm not in NORMALISATIONS:
            raise ConfigError(f"image.norm={self.norm!r}: expected one of {', '.join(NORMALISATIONS)}")

    def build(self, weights_path: str | None = None, **extra: Any) -> nn.Module:
        """The encoder from `encoder` and `kwargs`, plus `extra` arguments the method adds; `weights_path`: a
        local file or folder of pretrained weights (the timm encoder's `pretrained_path`)."""
        if weights_path is not None:
            extra["pretrained_path"] = weights_path
        return build_image_encoder(self.encoder, **{**self.kwargs, **extra})

    def processor(self, tokenizer: Tokenizer | None, tiny_size: tuple[int, int]) -> MethodProcessor:
        """The method's processor: this tower's size (else `tiny_size`), normalisation and transforms."""
        mean, std = NORMALISATIONS[self.norm]
        return MethodProcessor(
            image_size=self.size or tiny_size,
            mean=mean,
            std=std,
            train_transform=self.train_transform,
            test_transform=self.test_transform,
            tokenizer=tokenizer,
        )


# checkpoints may keep an ImageTowerConfig in their hyper-parameters (a keyword field): allow it under
# torch.load(weights_only=True)
torch.serialization.add_safe_globals([ImageTowerConfig])
