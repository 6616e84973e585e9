"""Tiny-profile encoders trained from scratch (docs/methods.md, "Tiny profile"): TinyViT (a ViT with CLS
token, as CLIP's visual tower), TinyCNN (3 stride-2 convs giving a grid of cells usable as regions) and
TinyText (a small transformer over word ids, as CLIP's text tower).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fgbench.data.batches import Text, Visual
from fgbench.encoders.layers import (
    get_pool,
    grid_output,
    pixels_of,
    resize_pos_grid,
    text_inputs,
    transformer,
    zero_padding,
)
from fgbench.encoders.outputs import ImageOutput, TextOutput
from fgbench.encoders.registry import register_image_encoder, register_text_encoder


@register_image_encoder("tiny_vit")
class TinyViT(nn.Module):
    """ViT: patch 8, width 64, depth 2, 4 heads, MLP 128; glob = CLS, tokens = CLS + patch tokens.

    Positions are learned for `image_size` and bicubically resized for any other size divisible by the patch.

    Example:
        >>> enc = TinyViT(image_size=(64, 32))
        >>> enc(Visual(pixels=torch.randn(2, 3, 64, 32))).tokens.shape  # [2, 1 + 8*4, 64]
    """

    def __init__(
        self,
        *,
        image_size: tuple[int, int] = (64, 32),
        patch_size: int = 8,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = (image_size[0] // patch_size, image_size[1] // patch_size)
        self.out_dim = width
        self.patch_embed = nn.Conv2d(3, width, patch_size, patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1 + self.grid[0] * self.grid[1], width) * 0.02)
        self.blocks = transformer(width, depth, heads, mlp_dim)
        self.norm = nn.LayerNorm(width)

    def forward(self, visual: Visual) -> ImageOutput:
        pixels = pixels_of(visual)
        h, w = pixels.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"TinyViT: image size {h}x{w} is not divisible by the patch size {self.patch_size}"
            )
        x = self.patch_embed(pixels)
        grid = (x.shape[2], x.shape[3])
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        pos = self.pos
        if grid != self.grid:
            pos = torch.cat([pos[:1], resize_pos_grid(pos[1:], self.grid, grid)])
        x = self.norm(self.blocks(x + pos))
        return grid_output(x, grid, glob=x[:, 0], cls_first=True)


@register_image_encoder("tiny_cnn")
class TinyCNN(nn.Module):
    """Three stride-2 conv-BN-ReLU layers (16/32/64 channels): a grid of 64-d cells (4x4 for a 32x32 image).

    tokens = cells with their normalised cell boxes (so region methods can use the grid as regions),
    glob = mean of the cells.

    Example:
        >>> TinyCNN()(Visual(pixels=torch.randn(2, 3, 32, 32))).boxes.shape  # [2, 16, 4]
    """

    def __init__(self, *, channels: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, visual: Visual) -> ImageOutput:
        fmap = self.body(pixels_of(visual))
        tokens = fmap.flatten(2).transpose(1, 2)
        return grid_output(tokens, (fmap.shape[2], fmap.shape[3]), glob=tokens.mean(1), cls_first=False)


@register_text_encoder("tiny_text")
class TinyText(nn.Module):
    """Word embeddings + learned positions + a transformer (width 64, depth 2, 4 heads, MLP 128).

    glob = the token at the last valid position (the EOS of `WordTokenizer`), or the masked mean or max.

    Example:
        >>> enc = TinyText(vocab_size=1005)
        >>> enc(Text(raw=raw, input_ids=ids, attention_mask=mask)).tokens.shape  # [B, L, 64]
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        max_len: int = 18,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        pool: Literal["last", "mean", "max"] = "last",
    ) -> None:
        super().__init__()
        self.out_dim = width
        self.pool = get_pool(pool)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.blocks = transformer(width, depth, heads, mlp_dim)
        self.norm = nn.LayerNorm(width)

    def forward(self, text: Text) -> TextOutput:
        ids, mask = text_inputs(text)
        if ids.shape[1] > self.pos.shape[0]:
            raise ValueError(f"TinyText: sequence length {ids.shape[1]} exceeds max_len {self.pos.shape[0]}")
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = zero_padding(self.norm(self.blocks(x, src_key_padding_mask=~mask)), mask)
        return TextOutput(glob=self.pool(x, mask), tokens=x, mask=mask)
