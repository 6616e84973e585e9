"""Name -> builder registries for image and text encoders (timm-style decorator registry).

A builder is any callable taking keyword arguments and returning an `nn.Module` (usually the encoder class
itself). The encoder modules register themselves when `fgbench.encoders` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from fgbench.registry import Registry


class EncoderRegistry(Registry[Callable[..., nn.Module]]):
    """Name -> encoder builder; encoders register on import of `fgbench.encoders` (no plugin loading)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind, plugins=False)

    def build(self, name: str, **kwargs: Any) -> nn.Module:
        """Build the encoder registered as `name` with keyword arguments `kwargs`."""
        return self.get(name)(**kwargs)


IMAGE_ENCODERS = EncoderRegistry("image encoder")
TEXT_ENCODERS = EncoderRegistry("text encoder")
register_image_encoder = IMAGE_ENCODERS.register
register_text_encoder = TEXT_ENCODERS.register


def build_image_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build an image encoder by name; its forward takes a `Visual` and returns an `ImageOutput`.

    Example:
        >>> enc = build_image_encoder("tiny_vit", image_size=(64, 32))
        >>> out = enc(Visual(pixels=torch.randn(2, 3, 64, 32)))  # out.glob [2,64], out.tokens [2,33,64]
    """
    return IMAGE_ENCODERS.build(name, **kwargs)


def build_text_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build a text encoder by name; its forward takes a tokenised `Text` and returns a `TextOutput`.

    Example:
        >>> enc = build_text_encoder("tiny_text", vocab_size=1005)
        >>> out = enc(Text(raw=["a man"], input_ids=ids, attention_mask=mask))  # out.glob [1,64]
    """
    return TEXT_ENCODERS.build(name, **kwargs)


def list_image_encoders() -> list[str]:
    return IMAGE_ENCODERS.list()


def list_text_encoders() -> list[str]:
    return TEXT_ENCODERS.list()
