"""Small building blocks shared by the encoders: grids of cell boxes, position-grid resizing (as IRRA resizes
CLIP's positional grid for 384x128 person images), pre-LN transformer stacks, CLIP's QuickGELU, masked pooling
and input checks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import Text, Visual
from fgbench.encoders.outputs import ImageOutput


def grid_boxes(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Normalised x1,y1,x2,y2 boxes of the cells of a (rows, cols) grid, row-major: [rows*cols, 4]."""
    rows, cols = grid
    y = torch.arange(rows, device=device, dtype=torch.float32)
    x = torch.arange(cols, device=device, dtype=torch.float32)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    boxes = torch.stack([xx / cols, yy / rows, (xx + 1) / cols, (yy + 1) / rows], dim=-1)
    return boxes.reshape(rows * cols, 4)


def resize_pos_grid(pos: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """Bicubically resize a row-major grid of position embeddings [old_h*old_w, D] to [new_h*new_w, D]."""
    dim = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new, mode="bicubic", align_corners=False).to(pos.dtype)
    return grid.permute(0, 2, 3, 1).reshape(new[0] * new[1], dim)


def transformer(
    width: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0
) -> nn.TransformerEncoder:
    """A pre-LN GELU transformer encoder stack over [B,T,width] (batch first)."""
    layer = nn.TransformerEncoderLayer(
        width, heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class QuickGELU(nn.Module):
    """x · σ(1.702 x), CLIP's activation (IRRA's MLM head)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """Zero the rows of x [B,T,D] where mask [B,T] is False."""
    return x * mask.unsqueeze(-1).to(x.dtype)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x [B,T,D] over the valid positions of mask [B,T]."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of x [B,T,D] over the valid positions of mask [B,T]."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def masked_softmax(logits: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """Softmax along `dim` over the positions where `mask` (broadcastable, True = valid) holds.

    The one rule for every method: masked positions get exactly 0, and a row with no valid position is all 0
    (an attention over nothing contributes nothing), never NaN. On rows with a valid position this equals a
    softmax over the valid positions alone (the masked logits underflow to an exact 0)."""
    x = logits.masked_fill(~mask, torch.finfo(logits.dtype).min).softmax(dim)
    return x.masked_fill(~mask, 0.0)


def grid_output(tokens: Tensor, grid: tuple[int, int], glob: Tensor, cls_first: bool) -> ImageOutput:
    """Wrap grid tokens [B,T,D] (row-major cells, after a CLS token when `cls_first`) with all-valid masks
    and their cell boxes; the CLS token's box is the whole image."""
    b, t, _ = tokens.shape
    boxes = grid_boxes(grid, tokens.device)
    if cls_first:
        boxes = torch.cat([boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]]), boxes])
    mask = torch.ones(b, t, dtype=torch.bool, device=tokens.device)
    return ImageOutput(glob=glob, tokens=tokens, mask=mask, boxes=boxes.expand(b, t, 4))


def last_valid(x: Tensor, mask: Tensor) -> Tensor:
    """x [B,T,D] at the last valid position of each row of mask [B,T] (right-padded sequences)."""
    last = mask.long().sum(1).clamp_min(1) - 1
    return x[torch.arange(x.shape[0], device=x.device), last]


POOLS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "last": last_valid,
    "mean": masked_mean,
    "max": masked_max,
}


def get_pool(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The sentence pooling `name` of POOLS: (tokens [B,L,D], mask [B,L]) -> [B,D]."""
    if name not in POOLS:
        raise ValueError(f"pool {name!r}: expected one of {', '.join(POOLS)}")
    return POOLS[name]


def text_inputs(text: Text) -> tuple[Tensor, Tensor]:
    """(input_ids [B,L], Bool mask [B,L]) of a tokenised `Text`; a clear error if it was not tokenised."""
    if text.input_ids is None:
        raise ValueError("Text.input_ids is None: attach a processor with a tokenizer to the DataModule")
    if text.attention_mask is None:
        raise ValueError("Text.attention_mask is None: the tokenizer must return an attention mask")
    return text.input_ids, text.attention_mask.bool()


def pixels_of(visual: Visual) -> Tensor:
    """The pixels [B,3,H,W] of a `Visual`; a clear error if it holds region features instead."""
    if visual.pixels is None:
        raise ValueError("Visual.pixels is None: this image encoder needs images, not region features")
    return visual.pixels
