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
  defaults of the paper profile (ViT-B/16 at 384x128, L = 77, 4-layer cross-modal transformer, `irra`
  augmentation, Adam eps 1e-3, lr 1e-5 with x5 on the cross-modal modules, classifier and MLM head).
- our reading: masking runs in the training step (on the device) instead of the dataset workers; the
  cross-modal blocks are `fgbench.encoders.layers.transformer` blocks (pre-LN, GELU, MLP 4x) where IRRA uses
  CLIP's QuickGELU residual blocks; the schedule steps per optimiser step (IRRA per epoch).
- `<|mask|>`: IRRA drops CLIP's last BPE merge so that its id (49405) becomes `<|mask|>` while SOT/EOT keep
  49406/49407. The HF tokenizer keeps that merge; we use id SOT - 1 (49405) as the mask id all the same, so
  the only difference is that captions containing that one rare word map it to the mask embedding. The tiny
  profile uses the WordTokenizer's reserved `<mask>`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from fgbench.data.batches import PairBatch, Text
from fgbench.data.module import RetrievalDataModule
from fgbench.encoders import CLIP_MEAN, CLIP_STD, WordTokenizer
from fgbench.encoders.layers import transformer
from fgbench.losses import id_loss, infonce, mask_tokens, mlm_loss, sdm
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides
from fgbench.registry import register_method
from methods.clip_ft import CLIP_PATH, IRRA_OPTIM, MAX_SCALE, ClipDual, ClipProfile

LOSS_NAMES = ("sdm", "itc", "mlm", "id")
TINY_TEMPERATURE = 0.07  # initial τ of the learnable temperature (tiny profile), as the tiny clip_ft
HEAD_LR_MULT = {"cross_attn": 5.0, "cross_modal_transformer": 5.0, "classifier": 5.0, "mlm_head": 5.0}


@dataclass
class IRRAProfile(ClipProfile):
    """IRRA's hyper-parameters in one profile."""

    temperature: float = 0.02  # τ of SDM and ITC
    cmt_depth: int = 1  # layers of the cross-modal transformer of the IRR head
    mask_prob: float = 0.15  # share of real caption tokens chosen for IRR


PROFILES: dict[str, IRRAProfile] = {
    "tiny": IRRAProfile(),
    "paper": IRRAProfile(
        pretrained=True,
        max_len=77,
        image_size=(384, 128),
        mean=CLIP_MEAN,
        std=CLIP_STD,
        train_transform="irra",
        cmt_depth=4,
        optim=replace(IRRA_OPTIM, lr_mult=dict(HEAD_LR_MULT)),
    ),
}


class QuickGELU(nn.Module):
    """x · σ(1.702 x), CLIP's activation (IRRA's MLM head)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


@register_method("irra")
class IRRA(ClipDual):
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
        overrides, **fields: `IRRAProfile` fields replacing the profile's (fgbench.profiles).
    """

    name = "irra"
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
        super().__init__(profile, clip_path, "sum", optim, loss_weights, merge_overrides(overrides, fields))
        self.save_hyperparameters()
        self.loss_names = tuple(loss_names)
        learnable = profile == "tiny" if temperature_learnable is None else temperature_learnable
        init = 1 / TINY_TEMPERATURE if learnable else 1 / self.cfg.temperature
        # log of the logit scale 1/τ of SDM and ITC (a constant when not learnable)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)
        self.classifier: nn.Linear | None = None
        self.mask_id = 0
        self.special_ids: tuple[int, ...] = ()

    def build(self, datamodule: RetrievalDataModule) -> None:
        if self.built:
            return
        super().build(datamodule)
        assert self.image_tower is not None
        width: int = self.image_tower.out_dim
        if "id" in self.loss_names:
            self.classifier = nn.Linear(width, datamodule.num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)
        if "mlm" in self.loss_names:
            self.mask_id, self.special_ids, vocab = self._mask_vocabulary()
            self._build_irr_head(width, vocab)

    def _mask_vocabulary(self) -> tuple[int, tuple[int, ...], int]:
        """(mask id, ids never chosen for masking, vocabulary size) of the tokenizer."""
        tok = self.tokenizer
        if isinstance(tok, WordTokenizer):
            return tok.mask_id, (tok.pad_id, tok.bos_id, tok.eos_id), tok.vocab_size
        hf = tok.tokenizer  # HFTokenizer: CLIP's SOT/EOT are the last two ids; SOT - 1 serves as <|mask|>
        specials = (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
        return hf.bos_token_id - 1, tuple(sorted(set(specials))), tok.vocab_size

    def _build_irr_head(self, width: int, vocab: int) -> None:
        """IRRA's cross-former and MLM head, initialised as in `model/build.py`."""
        heads, depth = max(1, width // 64), self.cfg.cmt_depth
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_modal_transformer = transformer(width, depth, heads, 4 * width)
        self.ln_pre_t, self.ln_pre_i, self.ln_post = (nn.LayerNorm(width) for _ in range(3))
        self.mlm_head = nn.Sequential(
            OrderedDict(
                dense=nn.Linear(width, width),
                gelu=QuickGELU(),
                ln=nn.LayerNorm(width),
                fc=nn.Linear(width, vocab),
            )
        )
        attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * depth) ** -0.5, (2 * width) ** -0.5
        for block in self.cross_modal_transformer.layers:
            nn.init.normal_(block.self_attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.self_attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.linear1.weight, std=fc_std)
            nn.init.normal_(block.linear2.weight, std=proj_std)
        nn.init.normal_(self.cross_attn.in_proj_weight, std=attn_std)
        nn.init.normal_(self.cross_attn.out_proj.weight, std=proj_std)
        nn.init.normal_(self.mlm_head.dense.weight, std=fc_std)
        nn.init.normal_(self.mlm_head.fc.weight, std=proj_std)

    def cross_former(self, text_tokens: Tensor, image_tokens: Tensor) -> Tensor:
        """Text tokens attend to the image tokens, then the cross-modal transformer and LN: [B, L, width]."""
        kv = self.ln_pre_i(image_tokens)
        x = self.cross_attn(self.ln_pre_t(text_tokens), kv, kv, need_weights=False)[0]
        return self.ln_post(self.cross_modal_transformer(x))

    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        image = self.image_out(batch.visual)
        text = self.text_out(batch.text)
        terms: dict[str, Tensor] = {}
        if "sdm" in self.loss_names:
            terms["sdm"] = sdm(text.glob, image.glob, batch.label, tau=self.temperature())
        if "itc" in self.loss_names:
            terms["itc"] = infonce(text.glob, image.glob, temperature=self.temperature())
        if "id" in self.loss_names:
            assert self.classifier is not None
            terms["id"] = id_loss(self.classifier, image.glob, text.glob, batch.label)
        if "mlm" in self.loss_names:
            assert image.tokens is not None
            terms["mlm"] = self.irr_loss(batch.text, image.tokens)
        return terms

    def temperature(self) -> Tensor:
        """τ of SDM and ITC: the profile's, or the learnt one (logit scale clamped at 100)."""
        return 1 / self.logit_scale.exp().clamp(max=MAX_SCALE)

    def irr_loss(self, text: Text, image_tokens: Tensor) -> Tensor:
        """Mask the captions, encode them, reason over the image tokens and predict the chosen tokens."""
        assert text.input_ids is not None and text.attention_mask is not None
        masked, labels = mask_tokens(
            text.input_ids,
            text.attention_mask,
            self.special_ids,
            self.mask_id,
            self.mlm_head.fc.out_features,
            prob=self.cfg.mask_prob,
        )
        tokens = self.text_out(
            Text(raw=text.raw, input_ids=masked, attention_mask=text.attention_mask)
        ).tokens
        assert tokens is not None
        return mlm_loss(self.mlm_head(self.cross_former(tokens, image_tokens)), labels)
