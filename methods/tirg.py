"""TIRG (Vo et al., CVPR 2019): a port of google/tirg (docs/methods.md §9).

[code] (checked against google/tirg `img_text_composition_models.py`, `text_model.py`, `torch_functions.py`):
φ_img = CNN average pool -> Linear; φ_txt = embedding -> LSTM -> output at the last valid step -> Dropout 0.1
-> Linear; the composition f = a0·σ(gate)⊙φ_img + a1·res, with gate and res each behind their own BatchNorm
over [φ_img; φ_txt] and (a0, a1) learnable from (1, 10); the normalisation y -> s·y/‖y‖ with s learnable from
4.0, applied to f and to the target's φ_img; the batch-based classification loss CE(f̂ ĝᵀ, diagonal), or
`soft_triplet` (log(1 + e^{d_ij − d_ik}) on squared distances, ≤ 3 random triplets per anchor, averaged);
SGD with momentum 0.9, lr 1e-2 (0.1× for the CNN), wd 1e-6, ×0.1 steps.

Our reading: the tiny profile (TinyCNN + LSTM 64, AdamW 1e-3); autograd's gradient of the soft triplet loss
(the code's hand-written backward is half of it); `mask_same_target` (on) drops other items
with the same target from a query's softmax, and in `soft_triplet` makes them positives (the code labels
items by batch position only); the lr step every 10 epochs stands for the code's 50k iterations; evaluation
features are unit vectors, so scores are cosines, which rank exactly as the training logits s²·cos.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from fgbench.data.batches import ComposedQueryBatch, Text, TripletBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders import (
    ImageTowerConfig,
    MethodProcessor,
    WordTokenizer,
    build_text_encoder,
    register_preset,
)
from fgbench.encoders.composers import GatedResidualComposer
from fgbench.features import Features
from fgbench.losses import batch_classification, same_target_mask
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method


@register_preset("center_crop")
def _center_crop(p: MethodProcessor) -> tuple[list, list]:
    """Resize the short side to the crop size, then centre-crop (TIRG: Resize(224), CenterCrop(224))."""
    return [v2.Resize(min(p.image_size)), v2.CenterCrop(p.image_size)], []


@dataclass
class TIRGConfig:
    """Hyper-parameters of one TIRG profile."""

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)  # CNN; TIRG does not augment
    embed_dim: int = 64  # d of φ_img, φ_txt and the composition
    word_dim: int = 64  # word embedding size
    text_hidden: int = 64  # LSTM hidden size
    text_dropout: float = 0.1  # dropout before the text fc
    max_words: int = 1000  # vocabulary cap (most frequent training words)
    max_len: int = 16  # words per text after truncation
    init_scale: float = 4.0  # initial s of the normalisation
    init_a: tuple[float, float] = (1.0, 10.0)  # initial (a0, a1) of the composition
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(step_epochs=10))  # lr of the new layers
    cnn_lr_mult: float = 1.0  # learning-rate multiplier of the CNN (optim.lr_mult "image_encoder.")


PROFILES: dict[str, TIRGConfig] = {
    "tiny": TIRGConfig(),
    "paper": TIRGConfig(
        image=ImageTowerConfig(
            encoder="timm",
            kwargs={"model_name": "resnet18"},
            size=(224, 224),
            norm="imagenet",
            train_transform="center_crop",
            test_transform="center_crop",
        ),
        embed_dim=512,
        word_dim=512,
        text_hidden=512,
        max_words=100_000,
        max_len=64,
        optim=OptimConfig(name="sgd", lr=1e-2, weight_decay=1e-6, schedule="step", step_epochs=10),
        cnn_lr_mult=0.1,
    ),
}


class ScaledNorm(nn.Module):
    """TIRG's `NormalizationLayer`: y -> s·y/‖y‖ with a learnable scale s."""

    def __init__(self, init_scale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, y: Tensor) -> Tensor:
        return self.scale * F.normalize(y, dim=-1)


def soft_triplet_loss(q: Tensor, g: Tensor, labels: Tensor, per_anchor: int = 3) -> Tensor:
    """google/tirg `compute_soft_triplet_loss_`: over X = [q; g] with labels [labels; labels], up to
    `per_anchor` random triplets (i, j, k) per anchor, L_j = L_i (j ≠ i), L_k ≠ L_i; the mean of
    log(1 + exp(d_ij − d_ik)) on squared Euclidean distances."""
    x = torch.cat([q, g])
    lab = torch.cat([labels, labels])
    n = len(x)
    same = lab[:, None] == lab[None, :]
    pos = same & ~torch.eye(n, dtype=torch.bool, device=x.device)
    valid = pos[:, :, None] & ~same[:, None, :]  # [i, j, k]
    draw = torch.rand(valid.shape, device=x.device).masked_fill(~valid, -1.0).view(n, -1)
    picked, flat = draw.topk(min(per_anchor, draw.shape[1]), dim=1)
    keep = picked >= 0
    anchor = torch.arange(n, device=x.device)[:, None].expand_as(flat)[keep]
    j, k = flat[keep] // n, flat[keep] % n
    d = torch.cdist(x, x).pow(2)
    return F.softplus(d[anchor, j] - d[anchor, k]).mean()


@register_method("tirg")
class TIRG(RetrievalMethod):
    """TIRG: a gated residual composition of image and text features, trained against the batch's targets.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        soft_triplet: the soft triplet loss instead of the batch-based classification loss.
        mask_same_target: items with the same target are not negatives of each other.
        weights_path: local file or folder of the timm CNN's ImageNet weights (required by the paper profile).
        optim: optimiser and schedule; default from the profile.
        overrides, **fields: any `TIRGConfig` field, overriding the profile's preset.
    """

    published_as: ClassVar[str] = "TIRG"  # results/published.csv
    provenance: ClassVar[str] = "port of google/tirg"
    tasks: ClassVar[frozenset[str]] = frozenset({"composed"})

    def __init__(
        self,
        profile: str = "tiny",
        soft_triplet: bool = False,
        mask_same_target: bool = True,
        weights_path: str | None = None,
        optim: OptimConfig | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        hp = resolve_profile(PROFILES, profile, merge_overrides(overrides, fields), "tirg")
        super().__init__(profile=profile, optim=optim or self._optim(hp))
        self.save_hyperparameters()
        self.hp = hp
        self.soft_triplet, self.mask_same_target = soft_triplet, mask_same_target
        if profile == "paper" and weights_path is None:
            raise ValueError("tirg: the paper profile needs weights_path (local ImageNet weights of the CNN)")
        self.image_encoder = hp.image.build(weights_path)
        self.image_fc = nn.Linear(self.image_encoder.out_dim, hp.embed_dim)
        self.text_encoder: nn.Module | None = None
        self.text_fc = nn.Sequential(nn.Dropout(hp.text_dropout), nn.Linear(hp.text_hidden, hp.embed_dim))
        self.composer = GatedResidualComposer(hp.embed_dim, hp.init_a)
        self.norm = ScaledNorm(hp.init_scale)

    @staticmethod
    def _optim(hp: TIRGConfig) -> OptimConfig:
        return hp.optim.with_lr_mult({"image_encoder.": hp.cnn_lr_mult})

    def build(self, data: DataInfo) -> None:
        """The vocabulary of the training texts and the LSTM over it."""
        if self.text_encoder is not None:
            return
        hp = self.hp
        tokenizer = WordTokenizer.build(data.train_texts, hp.max_words, hp.max_len)
        self.text_encoder = build_text_encoder(
            "lstm", vocab_size=tokenizer.vocab_size, word_dim=hp.word_dim, hidden=hp.text_hidden
        )
        self.processor = hp.image.processor(tokenizer, data.tiny_image_size)

    # -- features ----------------------------------------------------------------------------------------
    def image_features(self, visual: Visual) -> Tensor:
        """φ_img [B, d]."""
        return self.image_fc(self.image_encoder(visual).glob)

    def text_features(self, text: Text) -> Tensor:
        """φ_txt [B, d]."""
        assert self.text_encoder is not None, "call build(datamodule.info()) first"
        return self.text_fc(self.text_encoder(text).glob)

    def query_vectors(self, reference: Visual, text: Text) -> Tensor:
        """s·f̂ [B, d]: the normalised composition of the reference image and the text."""
        return self.norm(self.composer(self.image_features(reference), self.text_features(text)))

    def target_vectors(self, visual: Visual) -> Tensor:
        """s·φ̂_img [B, d] of the target images."""
        return self.norm(self.image_features(visual))

    # -- training ----------------------------------------------------------------------------------------
    def losses(self, batch: TripletBatch) -> dict[str, Tensor]:
        q = self.query_vectors(batch.reference, batch.text)
        g = self.target_vectors(batch.target)
        labels = batch.target_label if self.mask_same_target else torch.arange(len(q), device=q.device)
        if self.soft_triplet:
            return {"soft_triplet": soft_triplet_loss(q, g, labels)}
        return {"classification": batch_classification(q, g, exclude=same_target_mask(labels))}

    # -- evaluation --------------------------------------------------------------------------------------
    def encode_queries(self, batch: ComposedQueryBatch) -> Features:
        return Features(index=batch.index, glob=F.normalize(self.query_vectors(batch.reference, batch.text)))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        return Features(index=batch.index, glob=F.normalize(self.target_vectors(batch.visual)))
