"""VSE++ (Faghri et al., BMVC 2018): a port of fartashf/vsepp (docs/methods.md §8).

[code] (checked against fartashf/vsepp `model.py`, `vocab.py`): image = CNN pooled feature -> L2 -> Linear
(Xavier-uniform, zero bias) -> L2 (`EncoderImageFull`); text = word embeddings (uniform ±0.1) -> 1-layer
GRU -> output at the last valid step -> L2 (`EncoderText`); loss = hinge with the hardest negative in both
directions (`ContrastiveLoss`, `max_violation`), summed over the batch; Adam 2e-4, ×0.1 after 15 epochs,
gradient clipping 2.0; the vocabulary keeps training words seen at least 4 times, with start/end tokens.

Our reading: the `precomp` variant (mean of the regions -> Linear -> L2, docs/methods.md §8) replaces the CNN
when the data serves region features, and is labelled `variant: precomp` in result.json; the tiny profile
(TinyCNN + GRU 64, AdamW); words split by `split_words` and counted over the training captions only (vsepp:
nltk tokens of train + dev); captions truncated to `max_len` words (vsepp does not truncate);
`mask_same_label` (off, as in vsepp) removes same-label pairs from the negatives; with `finetune=False` the
CNN is frozen but, as in vsepp, its BatchNorm layers still follow the module's train/eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from fgbench.data.batches import PairBatch, TextBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders import ImageTowerConfig, MethodProcessor, build_text_encoder, register_preset
from fgbench.encoders.layers import masked_mean
from fgbench.encoders.regions import region_mask_of
from fgbench.encoders.tokenizers import build_vocabulary
from fgbench.features import Features
from fgbench.losses import hardest_negative_triplet
from fgbench.losses.warmup import summed_hinge_epochs, warmup_label
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method


@register_preset("resize_center_crop")
def _resize_center_crop(p: MethodProcessor) -> tuple[list, list]:
    """Resize the short side to 8/7 of the crop, then centre-crop (vsepp's test transform: 256 -> 224)."""
    return [v2.Resize(round(min(p.image_size) * 256 / 224)), v2.CenterCrop(p.image_size)], []


@dataclass
class VSEPPConfig:
    """Hyper-parameters of one VSE++ profile."""

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)  # the CNN (pixels path)
    embed_dim: int = 64  # d: joint space = GRU hidden size
    word_dim: int = 64  # word embedding size
    max_words: int = 1000  # vocabulary cap (most frequent training words)
    min_count: int = 1  # keep words seen at least this often in the training captions
    max_len: int = 16  # words per caption after truncation
    margin: float = 0.2  # α of the hinge
    sum_warmup_epochs: int | None = 0  # summed-hinge (VSE0) epochs first; None: per task family
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(step_epochs=15))
    grad_clip: float = 2.0  # gradient-norm clipping (0: off)


PROFILES: dict[str, VSEPPConfig] = {
    # from scratch the hardest negative collapses the tiny model (synth-scenes t2i R1 4.4, chance 2): the
    # summed hinge first, one epoch on image-text matching as vse_infty's `vse_mean_warmup_epochs`, every
    # epoch on person data (synth-person, 1 epoch: R1 1.17, chance 1.56); `summed_hinge_epochs`
    "tiny": VSEPPConfig(sum_warmup_epochs=None),
    "paper": VSEPPConfig(
        image=ImageTowerConfig(
            encoder="timm",
            kwargs={"model_name": "resnet152"},
            size=(224, 224),
            norm="imagenet",
            train_transform="randcrop_flip",
            test_transform="resize_center_crop",
        ),
        embed_dim=1024,
        word_dim=300,
        max_words=100_000,
        min_count=4,
        max_len=64,
        optim=OptimConfig(name="adam", lr=2e-4, weight_decay=0.0, schedule="step", step_epochs=15),
    ),
}


def xavier_linear(d_in: int, d_out: int) -> nn.Linear:
    """vsepp's `fc`: Xavier-uniform weight, zero bias."""
    fc = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(fc.weight)
    nn.init.zeros_(fc.bias)
    return fc


@register_method("vsepp")
class VSEPP(RetrievalMethod):
    """VSE++: GRU captions and CNN (or mean-region) images in one space, hardest-negative hinge loss.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        max_violation: hardest negative (VSE++); False sums the hinge over all negatives (VSE0).
        finetune: train the CNN (the published rows); False freezes it.
        mask_same_label: pairs sharing a label (same image or person) are not negatives (off in vsepp).
        weights_path: local file or folder of the timm CNN's ImageNet weights (required by the paper profile).
        optim: optimiser and schedule; default from the profile.
        overrides, **fields: any `VSEPPConfig` field, overriding the profile's preset.
    """

    published_as: ClassVar[str] = "VSE++"  # results/published.csv
    provenance: ClassVar[str] = "port of fartashf/vsepp"
    tasks: ClassVar[frozenset[str]] = frozenset({"text-image", "image-text"})

    def __init__(
        self,
        profile: str = "tiny",
        max_violation: bool = True,
        finetune: bool = True,
        mask_same_label: bool = False,
        weights_path: str | None = None,
        optim: OptimConfig | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        hp = resolve_profile(PROFILES, profile, merge_overrides(overrides, fields), "vsepp")
        super().__init__(profile=profile, optim=optim or hp.optim)
        self.save_hyperparameters()
        self.hp = hp
        self.max_violation, self.finetune, self.mask_same_label = max_violation, finetune, mask_same_label
        self.weights_path = weights_path
        self.text_encoder: nn.Module | None = None
        self.image_encoder: nn.Module | None = None  # the CNN; None on region features
        self.image_fc: nn.Linear | None = None
        self.variant = "images"
        self.sum_warmup = 0  # summed-hinge epochs, resolved from the profile and the data at build

    # -- building ----------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        """Vocabulary, text GRU and image branch (CNN for pixels, Linear over mean regions for precomp)."""
        if self.text_encoder is not None:
            return
        hp = self.hp
        self.sum_warmup = summed_hinge_epochs(hp.sum_warmup_epochs, data.family)
        tokenizer = build_vocabulary(data.train_texts, hp.max_words, hp.min_count, hp.max_len)
        self.text_encoder = build_text_encoder(
            "gru", vocab_size=tokenizer.vocab_size, word_dim=hp.word_dim, hidden=hp.embed_dim
        )
        regions = data.region_dim
        if regions is None:
            self.image_encoder = self._cnn()
            self.image_fc = xavier_linear(self.image_encoder.out_dim, hp.embed_dim)
        else:
            self.variant = "precomp"
            self.image_fc = xavier_linear(regions, hp.embed_dim)
        self.processor = hp.image.processor(tokenizer, data.tiny_image_size)

    def _cnn(self) -> nn.Module:
        if self.profile == "paper" and self.weights_path is None:
            raise ValueError("vsepp: the paper profile needs weights_path (local ImageNet CNN weights)")
        cnn = self.hp.image.build(self.weights_path)
        cnn.requires_grad_(self.finetune)
        return cnn

    # -- encoders ----------------------------------------------------------------------------------------
    def encode_text(self, text: Any) -> Tensor:
        """[B, d] unit caption vectors: the GRU output at the last valid step."""
        assert self.text_encoder is not None, "call build(datamodule.info()) first"
        return F.normalize(self.text_encoder(text).glob, dim=-1)

    def encode_image(self, visual: Visual) -> Tensor:
        """[B, d] unit image vectors: CNN -> L2 -> fc -> L2, or mean of the regions -> fc -> L2 (precomp)."""
        assert self.image_fc is not None, "call build(datamodule.info()) first"
        if self.image_encoder is None:
            if visual.regions is None:
                raise ValueError("vsepp was built on region features (precomp) but the batch has none")
            pooled = masked_mean(visual.regions, region_mask_of(visual))
        else:
            pooled = F.normalize(self.image_encoder(visual).glob, dim=-1)
        return F.normalize(self.image_fc(pooled), dim=-1)

    # -- training ----------------------------------------------------------------------------------------
    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        S = self.encode_image(batch.visual) @ self.encode_text(batch.text).T  # rows images, columns captions
        same = batch.label[:, None] == batch.label[None, :] if self.mask_same_label else None
        hardest = self.max_violation and self.current_epoch >= self.sum_warmup
        hinge = hardest_negative_triplet(S, self.hp.margin, hardest, positive_mask=same)
        return {"hinge": hinge}

    @property
    def grad_clip_norm(self) -> float:
        """The recipe's gradient-norm clip (`grad_clip`, 2.0); the trainer's setting wins when given."""
        return self.hp.grad_clip

    # -- evaluation --------------------------------------------------------------------------------------
    def encode_queries(self, batch: TextBatch) -> Features:
        return Features(index=batch.index, glob=self.encode_text(batch.text))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        return Features(index=batch.index, glob=self.encode_image(batch.visual))

    def run_details(self) -> dict[str, Any]:
        """The image branch used (`images` or the `precomp` variant) and the summed-hinge warm-up."""
        return {
            "variant": self.variant,
            "sum_warmup_epochs": warmup_label(self.sum_warmup),
        }
