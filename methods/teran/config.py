"""TERAN's profiles: sizes and recipe of the tiny and paper profiles (docs/methods.md §2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fgbench.encoders import ImageTowerConfig
from fgbench.encoders.token_text import TokenTextSizes
from fgbench.optim import OptimConfig

# -- configuration -----------------------------------------------------------------------------------------


@dataclass
class TERANConfig(TokenTextSizes):
    """Sizes and recipe of one TERAN profile (the switches of docs/methods.md §2 are `TERAN` arguments); its
    first fields, the text encoder's, are `TokenTextSizes`'s."""

    # pixels -> regions (grid cells, or RoI averages over the data's boxes); its size and (none) transforms
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    roi_boxes: bool = True  # tiny_cnn: RoI-average its map over the boxes served with the images
    max_regions: int = 36  # region sets from data or boxes are padded to this many slots at test time
    visual_layers: int = 2  # TE layers at the region-feature width (reference: 4 at 2048)
    visual_ff: int = 128  # their feed-forward width (reference: 2048)
    embed_dim: int = 64  # joint space d (reference: 1024)
    joint_layers: int = 2  # TE layers after the projection to d, per modality (reference: 2)
    joint_ff: int = 128  # their feed-forward width (reference: 2048)
    heads: int = 4  # attention heads of every TE layer (reference: 4)
    dropout: float = 0.1  # dropout of every TE layer (reference: 0.1)
    margin: float = 0.2  # α of the hinge
    sum_warmup_epochs: int | None = None  # summed-hinge (VSE0) epochs first; None: per task family (vsepp)
    store_dtype: str = "bfloat16"  # dtype of the token / region sets kept for scoring (computed in fp32)
    score_chunk: int = 1 << 25  # max elements of one [b_q, b_g, W, R] alignment chunk
    score_buckets: bool = True  # evaluation scores real slots only, sets grouped by length (exact)
    score_dtype: str = "float32"  # evaluation matmul dtype: float32 (exact) or bfloat16 (faster, approximate)
    optim: OptimConfig = field(default_factory=OptimConfig)  # one learning rate for every parameter
    warmup_steps: int = 0  # linear warm-up over this many optimiser steps (F30K recipe: 1000)
    grad_clip: float = 2.0  # gradient-norm clipping (0: off)


PROFILES: dict[str, TERANConfig] = {
    "tiny": TERANConfig(),
    "paper": TERANConfig(
        text_encoder="bert",
        max_len=88,
        visual_layers=4,
        visual_ff=2048,
        embed_dim=1024,
        joint_layers=2,
        joint_ff=2048,
        optim=OptimConfig(name="adam", lr=1e-5, weight_decay=0.0, schedule="step", step_epochs=20),
        sum_warmup_epochs=0,
    ),
}
