"""A CLIP dual encoder trained as IRRA trains it (Jiang & Ye, CVPR 2023; anosorae/IRRA `model/build.py`;
docs/methods.md §7): an alignment loss on the globals, an identity classifier, and a masked-token (MLM) loss
whose masked caption attends to some memory (image tokens, or learned reference tokens) before an MLM head.

- `ClipMLMConfig`: `ClipConfig` plus the alignment temperature, the depth of the cross-modal transformer and
  the masking rate.
- `ClipMLM`: the learnable/fixed temperature, the alignment terms (`sdm`, `itc`) and the ID term selected by
  `loss_names`, the mask vocabulary of the tokenizer and `masked_token_loss`; subclasses build the MLM head
  (`mlm_head`, `init_mlm_head`) and say what the masked caption attends to (`cross_former`).

[code] the heads' initialisation (`init_stds`), the MLM head (Linear, QuickGELU, LN, Linear), the ID
classifier (N(0, 0.001) weights, zero bias, shared by both modalities) are IRRA's. Our reading: masking runs
in the training step (on the device); `<|mask|>` is SOT - 1 for CLIP's BPE tokenizer (IRRA drops CLIP's last
BPE merge to free that id; the HF tokenizer keeps it) and the WordTokenizer's reserved `<mask>` otherwise.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fgbench.clip_dual import MAX_SCALE, ClipConfig, ClipDual
from fgbench.data.batches import Text
from fgbench.data.module import DataInfo
from fgbench.encoders import WordTokenizer
from fgbench.encoders.layers import QuickGELU
from fgbench.losses import id_loss, infonce, mask_tokens, mlm_loss, sdm
from fgbench.optim import OptimConfig

TINY_TEMPERATURE = 0.07  # initial τ of the learnable temperature (tiny profile), as CLIP's logit scale


@dataclass
class ClipMLMConfig(ClipConfig):
    """`ClipConfig` plus the fields of the alignment and masked-token losses."""

    temperature: float = 0.02  # τ of SDM and ITC
    cmt_depth: int = 1  # layers of the cross-modal transformer of the masked-token head (where there is one)
    mask_prob: float = 0.15  # share of real caption tokens chosen for the masked-token loss


def init_stds(width: int, depth: int) -> tuple[float, float, float]:
    """(attention in-projection, residual output projection, MLP input) stds of CLIP's residual blocks, as
    IRRA initialises its cross-modal transformer of `depth` layers."""
    return width**-0.5, width**-0.5 * (2 * depth) ** -0.5, (2 * width) ** -0.5


def mlm_head(width: int, vocab: int) -> nn.Sequential:
    """IRRA's MLM head: Linear, QuickGELU, LN, Linear -> vocabulary (PyTorch's default initialisation)."""
    return nn.Sequential(
        OrderedDict(
            dense=nn.Linear(width, width),
            gelu=QuickGELU(),
            ln=nn.LayerNorm(width),
            fc=nn.Linear(width, vocab),
        )
    )


def init_mlm_head(head: nn.Sequential, width: int, depth: int) -> None:
    """IRRA's initialisation of the MLM head next to a cross-modal transformer of `depth` layers."""
    _, proj_std, fc_std = init_stds(width, depth)
    nn.init.normal_(head.dense.weight, std=fc_std)
    nn.init.normal_(head.fc.weight, std=proj_std)


class ClipMLM(ClipDual):
    """CLIP dual encoder with IRRA's loss composition: `sdm` / `itc` on the globals, `id` (a classifier over
    the training identities) and a masked-token loss through `cross_former` and `mlm_head` (subclasses build
    both).

    Args (of `__init__`, after ClipDual's): loss_names: the terms to train with; temperature_learnable: None =
    learnable in the tiny profile (a logit scale from 1/0.07 clamped at 100: tiny towers trained from scratch
    stayed near chance at the fixed τ = 0.02 meant for pretrained CLIP), else fixed at the profile's
    `temperature` (IRRA's recipe).
    """

    mlm_head: nn.Sequential  # built by subclasses that train a masked-token loss

    def __init__(
        self,
        profile: str,
        clip_path: str,
        loss_names: Sequence[str],
        temperature_learnable: bool | None,
        optim: OptimConfig | None,
        loss_weights: dict[str, float] | None,
        overrides: Mapping[str, Any],
    ) -> None:
        super().__init__(profile, clip_path, "sum", optim, loss_weights, overrides)
        self.loss_names = tuple(loss_names)
        learnable = profile == "tiny" if temperature_learnable is None else temperature_learnable
        init = 1 / TINY_TEMPERATURE if learnable else 1 / self.hp.temperature
        # log of the logit scale 1/τ of SDM and ITC (a constant when not learnable)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init)), requires_grad=learnable)
        self.classifier: nn.Linear | None = None
        self.mask_id = 0
        self.special_ids: tuple[int, ...] = ()

    def build(self, data: DataInfo) -> None:
        """ClipDual's towers, then the ID classifier when `id` is trained."""
        if self.built:
            return
        super().build(data)
        if "id" in self.loss_names:
            self.classifier = nn.Linear(self.width, data.num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)

    @property
    def width(self) -> int:
        """Width of the image tower's tokens and globals (the heads' width)."""
        assert self.image_tower is not None
        return self.image_tower.out_dim

    def temperature(self) -> Tensor:
        """τ of SDM and ITC: the profile's, or the learnt one (logit scale clamped at 100)."""
        return 1 / self.logit_scale.exp().clamp(max=MAX_SCALE)

    def global_terms(self, text: Tensor, image: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The `sdm`, `itc` and `id` terms among `loss_names`, on un-normalised text and image globals."""
        terms: dict[str, Tensor] = {}
        if "sdm" in self.loss_names:
            terms["sdm"] = sdm(text, image, labels, tau=self.temperature())
        if "itc" in self.loss_names:
            terms["itc"] = infonce(text, image, temperature=self.temperature())
        if "id" in self.loss_names:
            assert self.classifier is not None
            terms["id"] = id_loss(self.classifier, image, text, labels)
        return terms

    def mask_vocabulary(self) -> tuple[int, tuple[int, ...], int]:
        """(mask id, ids never chosen for masking, vocabulary size) of the tokenizer."""
        tok = self.tokenizer
        if isinstance(tok, WordTokenizer):
            return tok.mask_id, (tok.pad_id, tok.bos_id, tok.eos_id), tok.vocab_size
        hf = tok.tokenizer  # HFTokenizer: CLIP's SOT/EOT are the last two ids; SOT - 1 serves as <|mask|>
        specials = (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
        return hf.bos_token_id - 1, tuple(sorted(set(specials))), tok.vocab_size

    def cross_former(self, text_tokens: Tensor, memory: Tensor) -> Tensor:
        """Masked-caption tokens [B, L, d] reasoned over `memory` [B, M, d]: [B, L, d] for the MLM head."""
        raise NotImplementedError(f"{type(self).__name__} defines no cross_former")

    def masked_token_loss(self, text: Text, memory: Tensor) -> Tensor:
        """Mask the captions, encode them, reason over `memory` and predict the chosen tokens."""
        assert text.input_ids is not None and text.attention_mask is not None
        masked, labels = mask_tokens(
            text.input_ids,
            text.attention_mask,
            self.special_ids,
            self.mask_id,
            self.mlm_head.fc.out_features,
            prob=self.hp.mask_prob,
        )
        tokens = self.text_out(
            Text(raw=text.raw, input_ids=masked, attention_mask=text.attention_mask)
        ).tokens
        assert tokens is not None
        return mlm_loss(self.mlm_head(self.cross_former(tokens, memory)), labels)
