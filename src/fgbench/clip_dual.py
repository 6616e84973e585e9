"""A CLIP-style dual encoder: the towers, tokenizer and processor built from the data, the query/gallery
encoders (captions, images, composed queries) and the hyper-parameters every CLIP-based method shares
(docs/methods.md §5-§7). Methods subclass `ClipDual` and add their losses.

- `ClipConfig`: the fields of a CLIP dual encoder profile; `pretrained_clip()` and `REID_PAPER` are the field
  sets the "paper" profiles share.
- `build_tokenizer` / `build_towers`: CLIP's BPE tokenizer and towers read from local files (nothing is
  downloaded), or a word vocabulary and random tiny towers.
- `REID_OPTIM`: the person-retrieval optimiser recipe of IRRA (Jiang & Ye, CVPR 2023; anosorae/IRRA).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import ComposedQueryBatch, Text, TextBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders import (
    HFTokenizer,
    ImageOutput,
    ImageTowerConfig,
    TextOutput,
    WordTokenizer,
    build_image_encoder,
    build_text_encoder,
)
from fgbench.features import Features
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import check_choice, resolve_profile

CLIP_PATH = "openai/clip-vit-base-patch16"  # hub name in the local HF cache, or a folder
FUSIONS = ("sum", "image_only", "text_only")  # composed query: sum of both globals, or one of them alone
MAX_SCALE = 100.0  # CLIP's clamp of a learnable logit scale 1/τ
# person retrieval optimiser of IRRA (anosorae/IRRA; docs/methods.md §5 and §7): Adam eps 1e-3, lr 1e-5,
# wd 4e-5, 5-epoch warm-up from 0.1x then cosine
REID_OPTIM = OptimConfig(
    name="adam",
    lr=1e-5,
    weight_decay=4e-5,
    eps=1e-3,
    schedule="cosine",
    warmup_epochs=5,
    warmup_start=0.1,
    bias_lr_mult=2.0,  # IRRA: biases at lr x2, no weight decay
)


@dataclass
class ClipConfig:
    """Hyper-parameters of a CLIP-style dual encoder in one profile (extended by methods with more fields)."""

    pretrained: bool = False  # True: CLIP towers + BPE tokenizer from `clip_path`; False: random tiny towers
    max_len: int = 16  # caption length: words (WordTokenizer) or BPE tokens incl. SOT/EOT (CLIP)
    vocab_words: int = 1000  # tiny: size of the word vocabulary built from the training captions
    # size, normalisation and transforms of the images; `encoder`: the random tower, "tiny_vit" (CLS token) or
    # "tiny_cnn" (mean of cells); pretrained: CLIP's ViT from `clip_path`
    image: ImageTowerConfig = field(default_factory=lambda: ImageTowerConfig(encoder="tiny_vit"))
    optim: OptimConfig = field(default_factory=OptimConfig)  # used unless `optim` is given explicitly


def pretrained_clip(**image: Any) -> dict[str, Any]:
    """`ClipConfig` fields of pretrained CLIP: BPE captions of 77 tokens, CLIP's pixel statistics; `image`:
    more fields of the image tower (size, transforms)."""
    return {
        "pretrained": True,
        "max_len": 77,
        "image": ImageTowerConfig(encoder="tiny_vit", norm="clip", **image),
    }


# pretrained CLIP at IRRA's person-retrieval setting: 384x128 images, IRRA's training augmentation
REID_PAPER: dict[str, Any] = pretrained_clip(size=(384, 128), train_transform="reid_crop")


def build_tokenizer(cfg: ClipConfig, data: DataInfo, clip_path: str | Path) -> Any:
    """CLIP's BPE tokenizer from `clip_path` (pretrained), else a word vocabulary of the training captions."""
    if cfg.pretrained:
        return _loud(lambda: HFTokenizer(clip_path, max_length=cfg.max_len), clip_path)
    return WordTokenizer.build(data.train_texts, max_words=cfg.vocab_words, max_len=cfg.max_len)


def build_towers(
    cfg: ClipConfig, tokenizer: Any, image_size: tuple[int, int], clip_path: str | Path
) -> tuple[nn.Module, nn.Module]:
    """(image tower, text tower): CLIP ViT + text transformer from `clip_path`, or TinyViT + TinyText."""
    if cfg.pretrained:
        image = _loud(
            lambda: build_image_encoder("clip_vit", name_or_path=clip_path, image_size=image_size), clip_path
        )
        text = _loud(lambda: build_text_encoder("clip_text", name_or_path=clip_path), clip_path)
        return image, text
    image = cfg.image.build(**({"image_size": image_size} if cfg.image.encoder == "tiny_vit" else {}))
    text = build_text_encoder("tiny_text", vocab_size=tokenizer.vocab_size, max_len=cfg.max_len + 2)
    return image, text


def _loud(load: Any, clip_path: str | Path) -> Any:
    """Run a loader of local CLIP files, turning a missing file into an error that says what to provide."""
    try:
        return load()
    except OSError as err:
        raise FileNotFoundError(
            f"CLIP weights/tokenizer not found at {str(clip_path)!r} (local files only, nothing is "
            "downloaded): pass `clip_path` = a folder saved with `save_pretrained`, or a hub name already "
            "in the HF cache"
        ) from err


class ClipDual(RetrievalMethod):
    """Two CLIP-style towers built from the data in `build`, encoding captions, images and composed queries.

    Subclasses set `presets` and `normalise_before_fusion` and implement `losses`; the resolved profile is
    `self.hp`.
    """

    presets: ClassVar[Mapping[str, ClipConfig]] = {}
    normalise_before_fusion: ClassVar[bool] = False  # composed q = normalise(f_img + f_txt) on unit inputs?

    def __init__(
        self,
        profile: str,
        clip_path: str,
        fusion: str,
        optim: OptimConfig | None,
        loss_weights: dict[str, float] | None,
        overrides: Mapping[str, Any],
    ) -> None:
        check_choice("fusion", fusion, FUSIONS)
        hp = resolve_profile(self.presets, profile, overrides, self.name)
        super().__init__(profile=profile, optim=optim or hp.optim, loss_weights=loss_weights)
        self.hp = hp
        self.clip_path = clip_path
        self.fusion = fusion
        self.optim_given = optim is not None
        self.image_tower: nn.Module | None = None
        self.text_tower: nn.Module | None = None
        self.tokenizer: Any = None  # WordTokenizer or HFTokenizer, built with the towers

    @property
    def built(self) -> bool:
        return self.image_tower is not None

    def build(self, data: DataInfo) -> None:
        """Tokenizer, towers and processor, once: setup runs again for test and must keep trained weights."""
        if self.built:
            return
        tokenizer = build_tokenizer(self.hp, data, self.clip_path)
        size = self.hp.image.size or data.tiny_image_size
        self.image_tower, self.text_tower = build_towers(self.hp, tokenizer, size, self.clip_path)
        self.tokenizer = tokenizer
        self.processor = self.hp.image.processor(tokenizer, size)

    # -- towers --------------------------------------------------------------------------------------
    def image_out(self, visual: Visual) -> ImageOutput:
        if self.image_tower is None:
            raise RuntimeError(f"{self.name}: call build(datamodule.info()) first (Trainer.setup does)")
        return self.image_tower(visual)

    def text_out(self, text: Text) -> TextOutput:
        if self.text_tower is None:
            raise RuntimeError(f"{self.name}: call build(datamodule.info()) first (Trainer.setup does)")
        return self.text_tower(text)

    def fuse(self, ref: Tensor, txt: Tensor) -> Tensor:
        """Unit composed query from raw reference-image and text globals, by `fusion`."""
        if self.normalise_before_fusion:
            ref, txt = F.normalize(ref, dim=-1), F.normalize(txt, dim=-1)
        parts = {"sum": ref + txt, "image_only": ref, "text_only": txt}
        return F.normalize(parts[self.fusion], dim=-1)

    # -- features ------------------------------------------------------------------------------------
    def encode_queries(self, batch: TextBatch | ComposedQueryBatch) -> Features:
        if isinstance(batch, ComposedQueryBatch):
            glob = self.fuse(self.image_out(batch.reference).glob, self.text_out(batch.text).glob)
        else:
            glob = F.normalize(self.text_out(batch.text).glob, dim=-1)
        return Features(index=batch.index, glob=glob)

    def encode_gallery(self, batch: VisualBatch) -> Features:
        return Features(index=batch.index, glob=F.normalize(self.image_out(batch.visual).glob, dim=-1))
