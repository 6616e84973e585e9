"""Any timm backbone as an image encoder: the pooled feature as glob and the last feature map as grid tokens,
or RoI-aligned features over given boxes (ResNet grid / RoI features as used by VSE++, TIRG and NSFSE,
docs/methods.md §4, §8, §9). Weights come only from local files, through timm's own weights-only loading.
timm is imported when the encoder is built (importing it takes seconds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from fgbench.data.batches import Visual
from fgbench.encoders.layers import grid_output, pixels_of, zero_padding
from fgbench.encoders.outputs import ImageOutput
from fgbench.encoders.registry import register_image_encoder


def roi_pool(fmap: Tensor, boxes: Tensor, sampling_ratio: int = -1) -> Tensor:
    """Average of a feature map [B,C,h,w] over each normalised box [B,R,4] (RoIAlign, 1x1 output) -> [B,R,C].

    With `aligned=True` and the adaptive sampling ratio, a box on cell borders averages exactly its cells.
    """
    b, r, _ = boxes.shape
    scale = boxes.new_tensor([fmap.shape[3], fmap.shape[2], fmap.shape[3], fmap.shape[2]])
    rois = list((boxes.to(fmap.dtype) * scale.to(fmap.dtype)).unbind(0))
    pooled = roi_align(
        fmap, rois, output_size=1, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True
    )
    return pooled.view(b, r, fmap.shape[1])


def _weights_overlay(pretrained_path: str | Path) -> dict[str, str]:
    """timm `pretrained_cfg_overlay` that loads a local file or a folder (model.safetensors / .bin)."""
    path = Path(pretrained_path)
    if not path.exists():
        raise FileNotFoundError(f"timm weights not found: {path}")
    return {"source": "local-dir", "file": str(path)} if path.is_dir() else {"file": str(path)}


@register_image_encoder("timm")
class TimmEncoder(nn.Module):
    """`timm.create_model(model_name, num_classes=0)`; weights from `pretrained_path` (weights only).

    glob = the model's pooled pre-logits feature. tokens = the last feature map's cells ([B,C,h,w] models)
    with their cell boxes, or the token sequence of transformer models ([B,T,C], boxes None). With `roi_boxes`
    the tokens are the map averaged over `Visual.boxes` (normalised) instead, masked by `Visual.region_mask`.

    Example:
        >>> enc = TimmEncoder(model_name="resnet50", pretrained_path="weights/resnet50.safetensors")
        >>> enc(Visual(pixels=torch.randn(2, 3, 224, 224))).tokens.shape  # [2, 49, 2048]
    """

    def __init__(
        self,
        *,
        model_name: str,
        pretrained_path: str | Path | None = None,
        roi_boxes: bool = False,
        roi_sampling_ratio: int = -1,
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        overlay = None if pretrained_path is None else _weights_overlay(pretrained_path)
        self.model = timm.create_model(
            model_name,
            pretrained=overlay is not None,
            num_classes=0,
            pretrained_cfg_overlay=overlay,
            **model_kwargs,
        )
        self.out_dim: int = self.model.num_features
        self.roi_boxes = roi_boxes
        self.roi_sampling_ratio = roi_sampling_ratio

    def forward(self, visual: Visual) -> ImageOutput:
        feats = self.model.forward_features(pixels_of(visual))
        glob = self.model.forward_head(feats, pre_logits=True)
        if feats.ndim == 3:
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
            return ImageOutput(glob=glob, tokens=feats, mask=mask)
        if not self.roi_boxes:
            return grid_output(
                feats.flatten(2).transpose(1, 2), (feats.shape[2], feats.shape[3]), glob, False
            )
        if visual.boxes is None:
            raise ValueError("Visual.boxes is None: roi_boxes=True needs normalised boxes with the pixels")
        mask = visual.region_mask
        if mask is None:
            mask = torch.ones(visual.boxes.shape[:2], dtype=torch.bool, device=feats.device)
        tokens = zero_padding(roi_pool(feats, visual.boxes, self.roi_sampling_ratio), mask)
        return ImageOutput(glob=glob, tokens=tokens, mask=mask, boxes=visual.boxes)
