"""CLIP towers from transformers, as used by IRRA (anosorae/IRRA), MMRef, clip_ft/clip_zs and CLIP4Cir
(docs/methods.md §1, §5-§7, §10): ViT image tokens after `ln_post` and the projection, CLS as glob; text
tokens after `ln_final` and the projection, EOT (the argmax id) as glob. For non-square inputs such as 384x128
the positional grid is bicubically resized once at build time (IRRA's `resize_pos_embed`) and stays trainable.

transformers is imported when an encoder is built (importing it takes seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fgbench.data.batches import Text, Visual
from fgbench.encoders.hf import load_hf_model
from fgbench.encoders.layers import grid_output, pixels_of, resize_pos_grid, text_inputs, zero_padding
from fgbench.encoders.outputs import ImageOutput, TextOutput
from fgbench.encoders.registry import register_image_encoder, register_text_encoder

if TYPE_CHECKING:
    from transformers import CLIPTextModel, CLIPVisionModel
    from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings


class GridEmbeddings(nn.Module):
    """CLIP's class + patch embeddings with a position table for a fixed (H, W) input, possibly non-square.

    Keeps the parameter names of `CLIPVisionEmbeddings`, so it replaces it in place.
    """

    def __init__(self, src: CLIPVisionEmbeddings, image_size: tuple[int, int]) -> None:
        super().__init__()
        p = src.patch_size
        if image_size[0] % p or image_size[1] % p:
            raise ValueError(f"CLIP: image size {image_size} is not divisible by the patch size {p}")
        self.image_size = image_size
        self.grid = (image_size[0] // p, image_size[1] // p)
        self.class_embedding = src.class_embedding
        self.patch_embedding = src.patch_embedding
        old = src.position_embedding.weight.detach()
        side = src.image_size // p
        new = torch.cat([old[:1], resize_pos_grid(old[1:], (side, side), self.grid)])
        self.position_embedding = nn.Embedding.from_pretrained(new, freeze=False)
        self.register_buffer("position_ids", torch.arange(new.shape[0]).unsqueeze(0), persistent=False)

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        if tuple(pixel_values.shape[-2:]) != self.image_size:
            raise ValueError(
                f"CLIP: built for {self.image_size} inputs, got {tuple(pixel_values.shape[-2:])}"
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


def _tower(
    classes: tuple[type, type], name_or_path: str | Path, projection: bool, local_files_only: bool, side: str
) -> tuple[Any, nn.Module, int]:
    """(the `side` tower, its projection or Identity, output width) of a transformers CLIP model: classes is
    (the model with projection, the plain one); side "vision" or "text" names `<side>_model`, and the
    projection is `visual_projection` or `text_projection`."""
    cls = classes[0] if projection else classes[1]
    model = load_hf_model(cls, name_or_path, local_files_only=local_files_only)
    tower = getattr(model, f"{side}_model", model)
    if not projection:
        return tower, nn.Identity(), tower.config.hidden_size
    head = "visual_projection" if side == "vision" else "text_projection"
    return tower, getattr(model, head), tower.config.projection_dim


@register_image_encoder("clip_vit")
class ClipVision(nn.Module):
    """CLIP ViT from a hub name in the local cache or a folder; glob = projected CLS, tokens = CLS + patches.

    Example:
        >>> enc = ClipVision(name_or_path="openai/clip-vit-base-patch16", image_size=(384, 128))
        >>> enc(Visual(pixels=torch.randn(2, 3, 384, 128))).tokens.shape  # [2, 1 + 24*8, 512]
    """

    def __init__(
        self,
        *,
        name_or_path: str | Path,
        image_size: tuple[int, int] | None = None,
        projection: bool = True,
        local_files_only: bool = True,
    ) -> None:
        super().__init__()
        from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

        classes = (CLIPVisionModelWithProjection, CLIPVisionModel)
        tower, self.proj, self.out_dim = _tower(classes, name_or_path, projection, local_files_only, "vision")
        self.vision: CLIPVisionModel = tower
        cfg = self.vision.config
        size = tuple(image_size) if image_size is not None else (cfg.image_size, cfg.image_size)
        self.vision.embeddings = GridEmbeddings(self.vision.embeddings, size)

    def forward(self, visual: Visual) -> ImageOutput:
        hidden = self.vision(pixel_values=pixels_of(visual)).last_hidden_state
        tokens = self.proj(self.vision.post_layernorm(hidden))
        return grid_output(tokens, self.vision.embeddings.grid, glob=tokens[:, 0], cls_first=True)


@register_text_encoder("clip_text")
class ClipText(nn.Module):
    """CLIP text transformer from a hub name in the local cache or a folder; glob = projected EOT token.

    The EOT position is the argmax of the ids (OpenAI CLIP and IRRA: EOT has the largest id).

    Example:
        >>> enc = ClipText(name_or_path="openai/clip-vit-base-patch16")
        >>> enc(Text(raw=raw, input_ids=ids, attention_mask=mask)).glob.shape  # [B, 512]
    """

    def __init__(
        self, *, name_or_path: str | Path, projection: bool = True, local_files_only: bool = True
    ) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        classes = (CLIPTextModelWithProjection, CLIPTextModel)
        tower, self.proj, self.out_dim = _tower(classes, name_or_path, projection, local_files_only, "text")
        self.text: CLIPTextModel = tower

    def forward(self, text: Text) -> TextOutput:
        ids, mask = text_inputs(text)
        # no padding mask, as OpenAI CLIP and IRRA: the text transformer is causal and captions are
        # right-padded, so no valid position attends to padding; transformers checks a 2D mask with
        # `padding_mask.all()`, which makes the host wait for the GPU at every call
        hidden = self.text(input_ids=ids).last_hidden_state
        tokens = zero_padding(self.proj(hidden), mask)
        glob = tokens[torch.arange(ids.shape[0], device=ids.device), ids.argmax(-1)]
        return TextOutput(glob=glob, tokens=tokens, mask=mask)
