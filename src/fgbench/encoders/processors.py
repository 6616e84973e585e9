"""A method's processor: image size, mean/std, named train/test transform presets (torchvision.transforms.v2)
and a tokenizer; implements the `fgbench.data.processor.Processor` protocol and runs in DataLoader workers.

Presets: `none` (resize); `reid_crop` (person re-identification augmentation, IRRA's `build_transforms`:
resize, h-flip 0.5, pad 10 + random crop, random erasing 0.02-0.4 filled with the mean); `randcrop_flip`
(VSE++ training: RandomResizedCrop + h-flip); `targetpad` (CLIP4Cir's `targetpad_transform`: pad to aspect
ratio <= 1.25, resize, centre crop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from fgbench.encoders.tokenizers import Tokenizer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Steps = tuple[list[Callable], list[Callable]]  # (before normalisation, after normalisation)
Preset = Callable[["MethodProcessor"], Steps]
TRANSFORM_PRESETS: dict[str, Preset] = {}


def register_preset(name: str) -> Callable[[Preset], Preset]:
    """Decorator adding a transform preset: processor -> (steps on the uint8 image, steps after Normalize)."""

    def deco(fn: Preset) -> Preset:
        TRANSFORM_PRESETS[name] = fn
        return fn

    return deco


class TargetPad:
    """Pad an image tensor [C,H,W] with zeros to aspect ratio `ratio` when it is more elongated (CLIP4Cir)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        if max(h, w) / min(h, w) < self.ratio:
            return img
        side = max(h, w) / self.ratio
        pad_w, pad_h = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
        return v2.functional.pad(img, [pad_w, pad_h, pad_w, pad_h], fill=0)


@register_preset("none")
def _none(p: MethodProcessor) -> Steps:
    return [v2.Resize(p.image_size)], []


@register_preset("reid_crop")
def _reid_crop(p: MethodProcessor) -> Steps:
    geometric = [
        v2.Resize(p.image_size),
        v2.RandomHorizontalFlip(0.5),
        v2.Pad(10),
        v2.RandomCrop(p.image_size),
    ]
    return geometric, [v2.RandomErasing(scale=(0.02, 0.4), value=list(p.mean))]


@register_preset("randcrop_flip")
def _randcrop_flip(p: MethodProcessor) -> Steps:
    return [v2.RandomResizedCrop(p.image_size), v2.RandomHorizontalFlip(0.5)], []


@register_preset("targetpad")
def _targetpad(p: MethodProcessor) -> Steps:
    resize = v2.Resize(min(p.image_size), interpolation=v2.InterpolationMode.BICUBIC)
    return [TargetPad(p.targetpad_ratio), resize, v2.CenterCrop(p.image_size)], []


@dataclass
class MethodProcessor:
    """Image transforms and tokenizer of a method, attached to the DataModule (docs/architecture.md, step 2).

    Example:
        >>> tok = HFTokenizer("openai/clip-vit-base-patch16", max_length=77)
        >>> proc = MethodProcessor((384, 128), CLIP_MEAN, CLIP_STD, "reid_crop", tokenizer=tok)
        >>> proc.image_transform(train=True)(pil_image).shape  # [3, 384, 128]
    """

    image_size: tuple[int, int] = (64, 32)  # (height, width)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    train_transform: str = "none"  # a TRANSFORM_PRESETS name
    test_transform: str = "none"  # a TRANSFORM_PRESETS name
    targetpad_ratio: float = 1.25  # aspect ratio of the `targetpad` preset
    tokenizer: Tokenizer | None = None  # None: captions stay strings

    def __post_init__(self) -> None:
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        for field in ("train_transform", "test_transform"):
            if getattr(self, field) not in TRANSFORM_PRESETS:
                known = ", ".join(sorted(TRANSFORM_PRESETS))
                raise ValueError(
                    f"MethodProcessor.{field}: unknown preset {getattr(self, field)!r}; known: {known}"
                )

    def image_transform(self, train: bool) -> Callable[[Image.Image], Tensor]:
        """PIL image -> normalised float tensor [3,H,W] through the train or test preset."""
        before, after = TRANSFORM_PRESETS[self.train_transform if train else self.test_transform](self)
        to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        return v2.Compose([v2.RGB(), v2.ToImage(), *before, *to_float, *after])

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor] | None:
        return None if self.tokenizer is None else self.tokenizer(texts)
