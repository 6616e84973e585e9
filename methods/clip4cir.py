"""CLIP4Cir stage 2 (Baldrati et al., ACM TOMM 2023): port of ABaldrati/CLIP4Cir's Combiner (docs/methods.md
§10).

[code] (checked against ABaldrati/CLIP4Cir `combiner.py`, `combiner_train.py`): over frozen CLIP features, the
raw (unnormalised) reference-image feature v_r and text feature t, t' = Drop0.5(ReLU(W_t t)),
v' = Drop0.5(ReLU(W_v v_r)), c = [t'; v'], h = Drop0.5(ReLU(W_c c)), λ = σ(W_λ2 Drop0.5(ReLU(W_λ1 c))),
q = normalise(W_o h + λt + (1−λ)v_r); loss CE(100·q ĝᵀ, diagonal) with ĝ the normalised CLIP feature of the
target; Adam, lr 2e-5; targetpad 1.25 preprocessing. Stage 1 (fine-tuning CLIP) is `clip_ft` (§5): pass its
checkpoint as `clip_checkpoint`.

Our reading: the paper profile loads a transformers CLIP ViT (default ViT-B/16; the paper's RN50x4 has no
transformers port), with the Combiner sized 4× / 8× the feature dim as 640 -> 2560 -> 5120; CLIP runs in the
trainer's precision rather than fp16; the tiny profile's "frozen CLIP" is a random TinyViT + TinyText pair
over the word vocabulary (or a tiny clip_ft checkpoint); `mask_same_target` (on) drops other items with the
same target from a query's softmax (the code does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import ComposedQueryBatch, Text, TripletBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders import (
    HFTokenizer,
    ImageTowerConfig,
    Tokenizer,
    WordTokenizer,
    build_text_encoder,
)
from fgbench.features import Features
from fgbench.losses import batch_classification, same_target_mask
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method

# key prefixes of the two CLIP towers in a clip_ft checkpoint's state dict
CLIP_TOWERS = ("image_tower.", "text_tower.")  # clip_ft's attribute names


@dataclass
class CLIP4CirConfig:
    """Hyper-parameters of one CLIP4Cir profile."""

    clip_name_or_path: str | None = None  # transformers CLIP (cache or folder); None: tiny random towers
    # the tiny image tower; with `clip_name_or_path`, CLIP's ViT at CLIP's pixel statistics (`image_tower`)
    image: ImageTowerConfig = field(default_factory=lambda: ImageTowerConfig(encoder="tiny_vit"))
    max_words: int = 1000  # tiny vocabulary cap
    max_len: int = 16  # tiny: words per text; CLIP: 77 tokens
    projection_dim: int | None = 128  # width of t' and v'; None: 4 × the CLIP feature dim
    hidden_dim: int | None = 256  # width of h and of the λ branch; None: 8 × the CLIP feature dim
    dropout: float = 0.5  # the Combiner's dropout
    logit_scale: float = 100.0  # CE(scale · q ĝᵀ)
    optim: OptimConfig = field(default_factory=OptimConfig)


PROFILES: dict[str, CLIP4CirConfig] = {
    "tiny": CLIP4CirConfig(),
    "paper": CLIP4CirConfig(
        clip_name_or_path="openai/clip-vit-base-patch16",
        image=ImageTowerConfig(
            encoder="clip_vit",
            size=(224, 224),
            norm="clip",
            train_transform="targetpad",
            test_transform="targetpad",
        ),
        max_len=77,
        projection_dim=None,
        hidden_dim=None,
        optim=OptimConfig(name="adam", lr=2e-5, weight_decay=0.0, schedule="constant"),
    ),
}


class Combiner(nn.Module):
    """ABaldrati/CLIP4Cir `Combiner`: q = normalise(W_o h + λt + (1−λ)v_r) over raw CLIP features."""

    def __init__(self, feature_dim: int, projection_dim: int, hidden_dim: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.text_projection = nn.Linear(feature_dim, projection_dim)
        self.image_projection = nn.Linear(feature_dim, projection_dim)
        self.dropout = nn.Dropout(dropout)
        self.combiner = nn.Linear(2 * projection_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, feature_dim)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
            nn.Sigmoid(),
        )

    def project(self, v: Tensor, t: Tensor) -> Tensor:
        """c = [t'; v']."""
        t_proj = self.dropout(F.relu(self.text_projection(t)))
        v_proj = self.dropout(F.relu(self.image_projection(v)))
        return torch.cat([t_proj, v_proj], dim=-1)

    def forward(self, v: Tensor, t: Tensor) -> Tensor:
        c = self.project(v, t)
        lam = self.dynamic_scalar(c)
        h = self.dropout(F.relu(self.combiner(c)))
        return F.normalize(self.output(h) + lam * t + (1 - lam) * v, dim=-1)


def load_clip_towers(path: str | Path, image: nn.Module, text: nn.Module) -> None:
    """Load the CLIP towers of a clip_ft checkpoint (Lightning or plain state dict; weights only)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    for prefix, tower in zip(CLIP_TOWERS, (image, text), strict=True):
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            tower.load_state_dict(part)
        except RuntimeError as err:
            raise ValueError(f"{path}: the '{prefix}*' weights do not fit this CLIP tower: {err}") from None


@register_method("clip4cir")
class CLIP4Cir(RetrievalMethod):
    """CLIP4Cir stage 2: a Combiner of frozen CLIP reference-image and text features.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        clip_checkpoint: a clip_ft checkpoint (stage 1) whose towers replace the initial CLIP weights.
        mask_same_target: items with the same target are not negatives of each other.
        optim: optimiser and schedule; default from the profile.
        overrides, **fields: any `CLIP4CirConfig` field, overriding the profile's preset.
    """

    published_as: ClassVar[str] = "CLIP4Cir v3 (TOMM'23)"  # results/published.csv
    provenance: ClassVar[str] = "port of ABaldrati/CLIP4Cir"
    tasks: ClassVar[frozenset[str]] = frozenset({"composed"})

    def __init__(
        self,
        profile: str = "tiny",
        clip_checkpoint: str | None = None,
        mask_same_target: bool = True,
        optim: OptimConfig | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        hp = resolve_profile(PROFILES, profile, merge_overrides(overrides, fields), "clip4cir")
        super().__init__(profile=profile, optim=optim or hp.optim)
        self.save_hyperparameters()
        self.hp = hp
        self.clip_checkpoint, self.mask_same_target = clip_checkpoint, mask_same_target
        self.image_encoder: nn.Module | None = None
        self.text_encoder: nn.Module | None = None
        self.combiner: Combiner | None = None

    # -- building ----------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        """The frozen CLIP towers and their tokenizer, then the Combiner sized to their feature dim."""
        if self.combiner is not None:
            return
        hp, tower = self.hp, self.image_tower()
        size = tower.size or data.tiny_image_size
        image, (text, tokenizer) = tower.build(image_size=size), self._text(data)
        if self.clip_checkpoint is not None:
            load_clip_towers(self.clip_checkpoint, image, text)
        self.image_encoder, self.text_encoder = image.requires_grad_(False), text.requires_grad_(False)
        dim = image.out_dim
        self.combiner = Combiner(dim, hp.projection_dim or 4 * dim, hp.hidden_dim or 8 * dim, hp.dropout)
        self.processor = tower.processor(tokenizer, size)
        self.train(self.training)  # the towers join in eval mode

    def image_tower(self) -> ImageTowerConfig:
        """The profile's image tower, or CLIP's ViT at CLIP's pixel statistics when `clip_name_or_path` names
        a CLIP (the frozen features need them, whatever the profile says)."""
        name = self.hp.clip_name_or_path
        if name is None:
            return self.hp.image
        return replace(self.hp.image, encoder="clip_vit", kwargs={"name_or_path": name}, norm="clip")

    def _text(self, data: DataInfo) -> tuple[nn.Module, Tokenizer]:
        """(text tower, tokenizer): transformers CLIP's, or a tiny random one over the word vocabulary."""
        hp = self.hp
        if hp.clip_name_or_path is not None:
            name = hp.clip_name_or_path
            text = build_text_encoder("clip_text", name_or_path=name)
            return text, HFTokenizer(name, max_length=hp.max_len)
        tokenizer = WordTokenizer.build(data.train_texts, hp.max_words, hp.max_len)
        text = build_text_encoder("tiny_text", vocab_size=tokenizer.vocab_size, max_len=hp.max_len + 2)
        return text, tokenizer

    def train(self, mode: bool = True) -> CLIP4Cir:
        """Train mode for the Combiner only: the frozen CLIP towers always run in eval mode."""
        super().train(mode)
        for tower in (self.image_encoder, self.text_encoder):
            if tower is not None:
                tower.eval()
        return self

    # -- features ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def clip_image(self, visual: Visual) -> Tensor:
        """Raw (unnormalised) frozen CLIP image features [B, D]."""
        assert self.image_encoder is not None, "call build(datamodule.info()) first"
        return self.image_encoder(visual).glob.float()

    @torch.no_grad()
    def clip_text(self, text: Text) -> Tensor:
        """Raw (unnormalised) frozen CLIP text features [B, D]."""
        assert self.text_encoder is not None, "call build(datamodule.info()) first"
        return self.text_encoder(text).glob.float()

    def query_vectors(self, reference: Visual, text: Text) -> Tensor:
        """q [B, D], unit norm: the Combiner of the reference image and the text."""
        assert self.combiner is not None, "call build(datamodule.info()) first"
        return self.combiner(self.clip_image(reference), self.clip_text(text))

    def target_vectors(self, visual: Visual) -> Tensor:
        """ĝ [B, D]: normalised CLIP image features."""
        return F.normalize(self.clip_image(visual), dim=-1)

    # -- training and evaluation -------------------------------------------------------------------------
    def losses(self, batch: TripletBatch) -> dict[str, Tensor]:
        q = self.query_vectors(batch.reference, batch.text)
        g = self.target_vectors(batch.target)
        exclude = same_target_mask(batch.target_label) if self.mask_same_target else None
        return {"classification": batch_classification(q, g, self.hp.logit_scale, exclude)}

    def encode_queries(self, batch: ComposedQueryBatch) -> Features:
        return Features(index=batch.index, glob=self.query_vectors(batch.reference, batch.text))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        return Features(index=batch.index, glob=self.target_vectors(batch.visual))
