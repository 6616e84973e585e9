"""IRRA: cross-modal implicit relation reasoning and aligning (Jiang & Ye, CVPR 2023; anosorae/IRRA), a port
(docs/methods.md §7).

A CLIP dual encoder trained with L = SDM + IRR + ID:
- SDM (`fgbench.losses.sdm`, τ = 0.02) on the CLS / EOT globals, identities as positives (the tiny profile
  learns τ from 0.07, `temperature_learnable`: from scratch the fixed 0.02 kept the tiny towers near chance);
- IRR: 15% of the caption's real tokens are masked (80/10/10, `fgbench.losses.mask_tokens`); the masked
  caption goes through the text tower, then cross-attention (Q = LN(text tokens), K/V = LN(image tokens)),
  a transformer and LN, then the MLM head predicts the chosen tokens;
- ID: one linear classifier over the training identities, N(0, 0.001) weights and zero bias, shared by both
  modalities, on the un-normalised globals.
At test time only the globals are used (dot product); the IRR head and the classifier are training-only.

What comes from where:
- [code] the architecture (`model/build.py`: `cross_former`, `mlm_head`, their initialisation, width // 64
  heads), the losses, the `loss_names` ablation (`sdm`, `itc`, `mlm`, `id`), the optimiser recipe and the
  defaults of the paper profile (ViT-B/16 at 384x128, L = 77, 4-layer cross-modal transformer, IRRA's
  augmentation (`reid_crop`), Adam eps 1e-3, lr 1e-5 with x5 on the cross-modal modules, classifier and MLM
  head).
- our reading: masking runs in the training step (on the device) instead of the dataset workers; the
  cross-modal blocks are `fgbench.encoders.layers.transformer` blocks (pre-LN, GELU, MLP 4x) where IRRA uses
  CLIP's QuickGELU residual blocks; the schedule steps per optimiser step (IRRA per epoch).
- `<|mask|>`: IRRA drops CLIP's last BPE merge so that its id (49405) becomes `<|mask|>` while SOT/EOT keep
  49406/49407. The HF tokenizer keeps that merge; we use id SOT - 1 (49405) as the mask id all the same, so
  the only difference is that captions containing that one rare word map it to the mask embedding. The tiny
  profile uses the WordTokenizer's reserved `<mask>`.
The loss composition, masking and MLM head live in `fgbench.clip_mlm` (shared with mmref); this module adds
IRRA's cross-former (image-conditioned IRR head) and its profiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from fgbench.clip_dual import CLIP_PATH, REID_OPTIM, REID_PAPER
from fgbench.clip_mlm import ClipMLM, ClipMLMConfig, init_mlm_head, init_stds, mlm_head
from fgbench.data.batches import PairBatch
from fgbench.data.module import DataInfo
from fgbench.encoders.layers import transformer
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides
from fgbench.registry import register_method

LOSS_NAMES = ("sdm", "itc", "mlm", "id")
HEAD_LR_MULT = {"cross_attn": 5.0, "cross_modal_transformer": 5.0, "classifier": 5.0, "mlm_head": 5.0}


@dataclass
class IRRAConfig(ClipMLMConfig):
    """IRRA's hyper-parameters in one profile (`ClipMLMConfig`'s fields)."""


PROFILES: dict[str, IRRAConfig] = {
    "tiny": IRRAConfig(),
    "paper": IRRAConfig(**REID_PAPER, cmt_depth=4, optim=replace(REID_OPTIM, lr_mult=dict(HEAD_LR_MULT))),
}


@register_method("irra")
class IRRA(ClipMLM):
    """IRRA (SDM + IRR + ID) on a CLIP dual encoder; test time uses the globals only.

    Args:
        profile: "tiny" (random tiny towers, word vocabulary, 1-layer IRR head) or "paper" (CLIP from
            `clip_path`, 4-layer head over CLIP's 49,408 tokens).
        clip_path: CLIP weights and tokenizer (hub name in the local cache, or a folder).
        loss_names: the loss terms to train with, a subset of {"sdm", "itc", "mlm", "id"}.
        temperature_learnable: None = learnable in the tiny profile (a logit scale from 1/0.07, clamped at
            100, as the tiny clip_ft: towers trained from scratch stayed near chance at the fixed τ = 0.02
            meant for pretrained CLIP), fixed at the profile's `temperature` otherwise (IRRA's recipe).
        optim: optimiser; None = the profile's.
        overrides, **fields: `IRRAConfig` fields replacing the profile's (fgbench.profiles).
    """

    published_as = "IRRA"  # results/published.csv
    provenance = "port of anosorae/IRRA"
    tasks = frozenset({"text-image"})
    presets = PROFILES
    IRR_HEAD = ("cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head")

    def __init__(
        self,
        profile: str = "tiny",
        clip_path: str = CLIP_PATH,
        loss_names: Sequence[str] = ("sdm", "mlm", "id"),
        temperature_learnable: bool | None = None,
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        unknown = sorted(set(loss_names) - set(LOSS_NAMES))
        if unknown or not loss_names:
            raise ValueError(f"loss_names={list(loss_names)}: expected a non-empty subset of {LOSS_NAMES}")
        merged = merge_overrides(overrides, fields)  # not `overrides =`: save_hyperparameters reads locals
        super().__init__(profile, clip_path, loss_names, temperature_learnable, optim, loss_weights, merged)
        self.save_hyperparameters()

    def build(self, data: DataInfo) -> None:
        if self.built:
            return
        super().build(data)
        if "mlm" in self.loss_names:
            self.mask_id, self.special_ids, vocab = self.mask_vocabulary()
            self._build_irr_head(self.width, vocab)

    def _build_irr_head(self, width: int, vocab: int) -> None:
        """IRRA's cross-former and MLM head, initialised as in `model/build.py`."""
        heads, depth = max(1, width // 64), self.hp.cmt_depth
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_modal_transformer = transformer(width, depth, heads, 4 * width)
        self.ln_pre_t, self.ln_pre_i, self.ln_post = (nn.LayerNorm(width) for _ in range(3))
        self.mlm_head = mlm_head(width, vocab)
        attn_std, proj_std, fc_std = init_stds(width, depth)
        for block in self.cross_modal_transformer.layers:
            nn.init.normal_(block.self_attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.linear1.weight, std=fc_std)
            nn.init.normal_(block.linear2.weight, std=proj_std)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        init_mlm_head(self.mlm_head, width, depth)

    def cross_former(self, text_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        """Text tokens attend to the image tokens, then the cross-modal transformer and LN: [B, L, width]."""
        kv = self.ln_pre_i(image_tokens)
        x = self.cross_attn(self.ln_pre_t(text_tokens), kv, kv, need_weights=False)[0]
        return self.ln_post(self.cross_modal_transformer(x))

    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        image = self.image_out(batch.visual)
        text = self.text_out(batch.text)
        terms = self.global_terms(text.glob, image.glob, batch.label)
        if "mlm" in self.loss_names:
            assert image.tokens is not None
            terms["mlm"] = self.masked_token_loss(batch.text, image.tokens)
        return terms
