"""NSFSE's hyper-parameters: the profiles, the allowed switches and ARTEMIS's transform presets
(docs/methods.md §4; what comes from where: the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchvision.transforms import v2

from fgbench.encoders import ImageTowerConfig, MethodProcessor, TargetPad, register_preset
from fgbench.optim import OptimConfig

PROVENANCE = "re-implementation from the paper's description"
CLIP_VARIANT = "clip (not from the paper)"
THRESHOLDS = ("dynamic", "fixed", "none")
NEG_STATS = ("all", "top5")
# score_terms -> the enhancement terms added to s_glob
SCORE_TERMS: dict[str, tuple[str, ...]] = {
    "glob": (),
    "glob+vis": ("vis",),
    "glob+vis+cross": ("vis", "cross"),
}
MIN_RERANK_K = 50  # R@50 is reported on every composed dataset


@register_preset("square_crop_flip")
def _square_crop_flip(p: MethodProcessor) -> tuple[list, list]:
    """Pad to square, resize the side to 8/7 of the crop (256 for 224), random crop, h-flip (ARTEMIS)."""
    side = round(min(p.image_size) * 256 / 224)
    return [TargetPad(1.0), v2.Resize(side), v2.RandomCrop(p.image_size), v2.RandomHorizontalFlip(0.5)], []


@register_preset("square_center_crop")
def _square_center_crop(p: MethodProcessor) -> tuple[list, list]:
    """Pad to square, resize the side to 8/7 of the crop, centre crop (ARTEMIS test)."""
    side = round(min(p.image_size) * 256 / 224)
    return [TargetPad(1.0), v2.Resize(side), v2.CenterCrop(p.image_size)], []


@dataclass
class NSFSEConfig:
    """Hyper-parameters of one NSFSE profile."""

    # the CNN giving a grid of cells; the CLIP variant keeps the transforms, its size (None: CLIP's own) and
    # CLIP's statistics
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    embed_dim: int = 64  # d: grid cells, words, composition
    word_dim: int = 64  # word embedding size (GloVe: 300)
    text_hidden: int = 32  # BiGRU hidden size per direction (W has 2x this, projected to d if different)
    max_words: int = 1000  # vocabulary cap (most frequent training words)
    max_len: int = 16  # words per text after truncation (L = max_len + 2 with <bos>/<eos>)
    attn_scale: float = 10.0  # λ of every attention softmax
    init_weights: tuple[float, float] = (1.0, 1.0)  # (w1, w2) of s_vis and s_cross
    init_logit_scale: float = 2.659  # ℓ: L_bbc's logits are exp(ℓ)·S
    ms_a: float = 2.0  # Multi-Similarity positive scale a
    ms_b: float = 50.0  # Multi-Similarity negative scale b
    fixed_theta: float = 0.5  # θ of threshold=fixed (and before the first dynamic update)
    ema_momentum: float = 0.9  # momentum of the dynamic threshold's statistics
    init_a: tuple[float, float] = (1.0, 10.0)  # TIRG's initial (a0, a1)
    score_chunk: int = 1 << 24  # elements of one [b_q, b_g, L, N] tensor when scoring (memory bound)
    score_buckets: bool = True  # evaluation scores real words only, captions grouped by length (exact)
    store_dtype: str = "bfloat16"  # dtype of the token sets kept for scoring (computed in fp32)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(step_epochs=10, gamma=0.5))  # new layers
    backbone_lr_mult: float = 1.0  # lr multiplier of the CNN (and of unfrozen CLIP towers)


PROFILES: dict[str, NSFSEConfig] = {
    "tiny": NSFSEConfig(),
    "paper": NSFSEConfig(
        image=ImageTowerConfig(
            encoder="timm",
            kwargs={"model_name": "resnet50"},
            size=(224, 224),
            norm="imagenet",
            train_transform="square_crop_flip",
            test_transform="square_center_crop",
        ),
        embed_dim=512,
        word_dim=300,
        text_hidden=256,
        max_words=100_000,
        max_len=32,
        optim=OptimConfig(lr=5e-4, schedule="step", step_epochs=10, gamma=0.5),
        backbone_lr_mult=0.1,
    ),
}
