"""clip_ft: a CLIP dual encoder fine-tuned with symmetric InfoNCE (docs/methods.md §5; suite baseline).

Text-image and image-text: S = f̂_t f̂_vᵀ · scale, L = ½[CE(S, diag) + CE(Sᵀ, diag)]; items of the same
identity in a batch are negatives, by design (the one difference from IRRA's SDM). Composed retrieval is
CLIP4Cir's stage 1 (Baldrati et al., ACM TOMM 2023; ABaldrati/CLIP4Cir `clip_fine_tune.py`):
q = normalise(f_img(ref) + f_txt(text)) on the raw tower outputs, g = normalise(f_img(tgt)),
L = CE(100 · q gᵀ, diag).

What comes from where:
- [code] CLIP4Cir's element-wise-sum query, CE(100·q gᵀ) and `encoder ∈ {both, text, image}`; the person
  recipe is IRRA's (anosorae/IRRA: CLIP ViT-B/16 at 384x128, Adam eps 1e-3, lr 1e-5, wd 4e-5, 5-epoch
  warm-up from 0.1x then cosine) with τ = 0.02 fixed, as docs/methods.md §5 specifies.
- [inf] the Flickr30K/COCO recipe (224, AdamW lr 1e-5 wd 0.2, 1 warm-up epoch then cosine, learnable logit
  scale initialised at 1/0.07 and clamped at 100); docs/methods.md §11 lists it as uncertain.
- our reading: the task family (person / image-text / composed) is read from the DataModule's tasks in
  `build`, and picks the logit scale and, in the paper profile, the image size, transforms and optimiser;
  CUB/Flowers (text-image only) use the person recipe. In a composed batch, columns whose target is the row's
  own target image (`target_label`) are not negatives. The schedule steps per optimiser step (IRRA steps per
  epoch). Biases get IRRA's lr x2 and no weight decay (`OptimConfig.bias_lr_mult`).
- deviation: CLIP4Cir uses RN50x4, which transformers does not provide; the paper profile runs ViT-B/16 at
  224 with targetpad 1.25 on composed retrieval.

The towers (`ClipDual`, `ClipConfig`) live in `fgbench.clip_dual`, shared with `clip_zs`, `irra` and `mmref`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.clip_dual import (
    CLIP_PATH,
    FUSIONS,
    MAX_SCALE,
    REID_OPTIM,
    REID_PAPER,
    ClipConfig,
    ClipDual,
)
from fgbench.data.batches import PairBatch, TripletBatch
from fgbench.data.module import DataInfo
from fgbench.losses import infonce
from fgbench.optim import OptimConfig
from fgbench.profiles import apply_overrides, check_choice, merge_overrides
from fgbench.registry import register_method

ENCODERS = ("both", "text", "image")

PROFILES: dict[str, ClipConfig] = {
    "tiny": ClipConfig(),
    # person retrieval (IRRA's setting); other task families replace fields from PAPER_BY_FAMILY
    "paper": ClipConfig(**REID_PAPER, optim=REID_OPTIM),
}
# paper-profile fields that differ by task family (docs/methods.md §5), applied as overrides of the preset;
# explicit overrides apply after them, field by field
PAPER_BY_FAMILY: dict[str, dict[str, Any]] = {
    "person": {},
    "itm": {
        "image": {"size": (224, 224), "train_transform": "none"},
        "optim": OptimConfig(name="adamw", lr=1e-5, weight_decay=0.2, warmup_epochs=1, warmup_start=0.0),
    },
    "composed": {
        "image": {"size": (224, 224), "train_transform": "targetpad", "test_transform": "targetpad"},
        "optim": OptimConfig(name="adamw", lr=2e-6, eps=1e-7, weight_decay=0.01, schedule="constant"),
    },
}
# logit scale (1/τ) by task family: fixed τ = 0.02 (person), learnable from 1/0.07 (itm), CLIP4Cir's 100
FAMILY_SCALE = {"person": 50.0, "itm": 1 / 0.07, "composed": 100.0}
FAMILY_LEARNABLE = {"person": False, "itm": True, "composed": False}


@register_method("clip_ft")
class ClipFT(ClipDual):
    """Fine-tuned CLIP dual encoder: symmetric InfoNCE, or CLIP4Cir stage 1 on composed retrieval.

    Args:
        profile: "tiny" (random tiny towers, word vocabulary) or "paper" (CLIP from `clip_path`).
        clip_path: CLIP weights and tokenizer (hub name in the local cache, or a folder).
        logit_scale_learnable: None = learnable in the tiny profile (from scratch; a fixed τ = 0.02 left
            synth-person at chance) and in the paper profile on image-text matching, fixed otherwise.
        query_fusion: composed query from "sum" (CLIP4Cir), "image_only" or "text_only" (calibration).
        encoder: which towers train: "both", "text" or "image" (the other is frozen).
        optim: optimiser; None = the profile's (paper: the task family's recipe).
        overrides, **fields: `ClipConfig` fields replacing the profile's (fgbench.profiles).
    """

    published_as = "CLIP (fine-tuned baseline)"  # results/published.csv
    provenance = "suite baseline"
    tasks = frozenset({"text-image", "image-text", "composed"})
    presets = PROFILES

    def __init__(
        self,
        profile: str = "tiny",
        clip_path: str = CLIP_PATH,
        logit_scale_learnable: bool | None = None,
        query_fusion: str = "sum",
        encoder: str = "both",
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        check_choice("encoder", encoder, ENCODERS)
        check_choice("query_fusion", query_fusion, FUSIONS)
        overrides = merge_overrides(overrides, fields)
        super().__init__(profile, clip_path, query_fusion, optim, loss_weights, overrides)
        self.save_hyperparameters()
        self.overrides = dict(overrides)
        self.logit_scale_learnable = logit_scale_learnable
        self.encoder = encoder
        self.family = ""
        self.logit_scale: nn.Parameter | None = None  # log of the scale, built with the towers

    def build(self, data: DataInfo) -> None:
        if self.built:
            return
        self.family = data.family
        if self.profile == "paper":
            family = apply_overrides(PROFILES["paper"], PAPER_BY_FAMILY[self.family])
            self.hp = apply_overrides(family, self.overrides, f"{self.name}: ")
            if not self.optim_given:
                self.optim_cfg = self.hp.optim
        super().build(data)
        learnable = self.logit_scale_learnable
        if learnable is None:  # the fixed scales are the paper recipes for pretrained CLIP
            learnable = self.profile == "tiny" or FAMILY_LEARNABLE[self.family]
        init = 1 / 0.07 if learnable else FAMILY_SCALE[self.family]
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)
        frozen = {"text": self.image_tower, "image": self.text_tower}.get(self.encoder)
        if frozen is not None:
            frozen.requires_grad_(False)

    def scale(self) -> Tensor:
        """The logit scale 1/τ (clamped at 100 when learnable)."""
        assert self.logit_scale is not None
        return self.logit_scale.exp().clamp(max=MAX_SCALE)

    def losses(self, batch: PairBatch | TripletBatch) -> dict[str, Tensor]:
        if isinstance(batch, TripletBatch):
            return {"cir": self.composed_loss(batch)}
        return {"itc": self.pair_loss(self.text_out(batch.text).glob, self.image_out(batch.visual).glob)}

    def pair_loss(self, text: Tensor, image: Tensor) -> Tensor:
        """Symmetric InfoNCE over a batch of matching (caption, image) rows (normalised inside)."""
        return infonce(text, image, logit_scale=self.scale())

    def composed_loss(self, batch: TripletBatch) -> Tensor:
        """CE(scale · q gᵀ, diag); another row's target that is this row's own target image is no negative."""
        q = self.fuse(self.image_out(batch.reference).glob, self.text_out(batch.text).glob)
        g = F.normalize(self.image_out(batch.target).glob, dim=-1)
        logits = self.scale() * q @ g.T
        same = batch.target_label[:, None] == batch.target_label[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(q), device=q.device))
