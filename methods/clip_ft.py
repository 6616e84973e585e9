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

The towers (`ClipDual`, `ClipProfile`) are shared with `clip_zs` and `irra`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import (
    ComposedQueryBatch,
    PairBatch,
    Text,
    TextBatch,
    TripletBatch,
    Visual,
    VisualBatch,
)
from fgbench.data.module import RetrievalDataModule, task_family
from fgbench.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    HFTokenizer,
    ImageOutput,
    MethodProcessor,
    TextOutput,
    WordTokenizer,
    build_image_encoder,
    build_text_encoder,
)
from fgbench.features import Features
from fgbench.losses import infonce
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import check_choice, merge_overrides, resolve_profile
from fgbench.registry import register_method

CLIP_PATH = "openai/clip-vit-base-patch16"  # hub name in the local HF cache, or a folder
FUSIONS = ("sum", "image_only", "text_only")
ENCODERS = ("both", "text", "image")
# IRRA's optimiser (docs/methods.md §7), also clip_ft's on person retrieval (§5)
IRRA_OPTIM = OptimConfig(
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
class ClipProfile:
    """Hyper-parameters of a CLIP-style dual encoder in one profile (clip_ft, clip_zs; extended by irra)."""

    pretrained: bool = False  # True: CLIP towers + BPE tokenizer from `clip_path`; False: random tiny towers
    max_len: int = 16  # caption length: words (WordTokenizer) or BPE tokens incl. SOT/EOT (CLIP)
    vocab_words: int = 1000  # tiny: size of the word vocabulary built from the training captions
    image_size: tuple[int, int] | None = None  # (height, width); None: the DataModule's tiny size
    tiny_image: str = "tiny_vit"  # tiny image tower: "tiny_vit" (CLS token) or "tiny_cnn" (mean of cells)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # pixel normalisation
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    train_transform: str = "none"  # a fgbench.encoders TRANSFORM_PRESETS name
    test_transform: str = "none"
    optim: OptimConfig = field(default_factory=OptimConfig)  # used unless `optim` is given explicitly


def build_tokenizer(cfg: ClipProfile, dm: RetrievalDataModule, clip_path: str | Path) -> Any:
    """CLIP's BPE tokenizer from `clip_path` (pretrained), else a word vocabulary of the training captions."""
    if cfg.pretrained:
        return _loud(lambda: HFTokenizer(clip_path, max_length=cfg.max_len), clip_path)
    return WordTokenizer.build(dm.train_texts(), max_words=cfg.vocab_words, max_len=cfg.max_len)


def build_towers(
    cfg: ClipProfile, tokenizer: Any, image_size: tuple[int, int], clip_path: str | Path
) -> tuple[nn.Module, nn.Module]:
    """(image tower, text tower): CLIP ViT + text transformer from `clip_path`, or TinyViT + TinyText."""
    if cfg.pretrained:
        image = _loud(
            lambda: build_image_encoder("clip_vit", name_or_path=clip_path, image_size=image_size), clip_path
        )
        text = _loud(lambda: build_text_encoder("clip_text", name_or_path=clip_path), clip_path)
        return image, text
    kwargs = {"image_size": image_size} if cfg.tiny_image == "tiny_vit" else {}
    image = build_image_encoder(cfg.tiny_image, **kwargs)
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

    Subclasses set `presets` and `normalise_before_fusion` and implement `losses`.
    """

    presets: ClassVar[Mapping[str, ClipProfile]] = {}
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
        cfg = resolve_profile(self.presets, profile, overrides, self.name)
        super().__init__(profile=profile, optim=optim or cfg.optim, loss_weights=loss_weights)
        self.cfg = cfg
        self.clip_path = clip_path
        self.fusion = fusion
        self.optim_given = optim is not None
        self.image_tower: nn.Module | None = None
        self.text_tower: nn.Module | None = None
        self.tokenizer: Any = None  # WordTokenizer or HFTokenizer, built with the towers

    @property
    def built(self) -> bool:
        return self.image_tower is not None

    def build(self, datamodule: RetrievalDataModule) -> None:
        """Tokenizer, towers and processor, once: setup runs again for test and must keep trained weights."""
        if self.built:
            return
        tokenizer = build_tokenizer(self.cfg, datamodule, self.clip_path)
        size = self.cfg.image_size or datamodule.tiny_image_size
        self.image_tower, self.text_tower = build_towers(self.cfg, tokenizer, size, self.clip_path)
        self.tokenizer = tokenizer
        self.processor = MethodProcessor(
            image_size=size,
            mean=self.cfg.mean,
            std=self.cfg.std,
            train_transform=self.cfg.train_transform,
            test_transform=self.cfg.test_transform,
            tokenizer=tokenizer,
        )

    # -- towers --------------------------------------------------------------------------------------
    def image_out(self, visual: Visual) -> ImageOutput:
        if self.image_tower is None:
            raise RuntimeError(f"{self.name}: call build(datamodule) first (Trainer.setup does)")
        return self.image_tower(visual)

    def text_out(self, text: Text) -> TextOutput:
        if self.text_tower is None:
            raise RuntimeError(f"{self.name}: call build(datamodule) first (Trainer.setup does)")
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


PROFILES: dict[str, ClipProfile] = {
    "tiny": ClipProfile(),
    # person retrieval (IRRA's setting); other task families replace fields from PAPER_BY_FAMILY
    "paper": ClipProfile(
        pretrained=True,
        max_len=77,
        image_size=(384, 128),
        mean=CLIP_MEAN,
        std=CLIP_STD,
        train_transform="irra",
        optim=IRRA_OPTIM,
    ),
}
# paper-profile fields that differ by task family (docs/methods.md §5); explicit overrides win
PAPER_BY_FAMILY: dict[str, dict[str, Any]] = {
    "person": {},
    "itm": {
        "image_size": (224, 224),
        "train_transform": "none",
        "optim": OptimConfig(name="adamw", lr=1e-5, weight_decay=0.2, warmup_epochs=1, warmup_start=0.0),
    },
    "composed": {
        "image_size": (224, 224),
        "train_transform": "targetpad",
        "test_transform": "targetpad",
        "optim": OptimConfig(name="adamw", lr=2e-6, eps=1e-7, weight_decay=0.01, schedule="constant"),
    },
}
# logit scale (1/τ) by task family: fixed τ = 0.02 (person), learnable from 1/0.07 (itm), CLIP4Cir's 100
FAMILY_SCALE = {"person": 50.0, "itm": 1 / 0.07, "composed": 100.0}
FAMILY_LEARNABLE = {"person": False, "itm": True, "composed": False}
MAX_SCALE = 100.0  # CLIP's clamp of the learnable logit scale


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
        overrides, **fields: `ClipProfile` fields replacing the profile's (fgbench.profiles).
    """

    name = "clip_ft"
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
        self.overrides = frozenset(overrides)
        self.logit_scale_learnable = logit_scale_learnable
        self.encoder = encoder
        self.family = ""
        self.logit_scale: nn.Parameter | None = None  # log of the scale, built with the towers

    def build(self, datamodule: RetrievalDataModule) -> None:
        if self.built:
            return
        self.family = task_family(datamodule)
        if self.profile == "paper":
            family = {k: v for k, v in PAPER_BY_FAMILY[self.family].items() if k not in self.overrides}
            self.cfg = replace(self.cfg, **family)
            if not self.optim_given:
                self.optim_cfg = self.cfg.optim
        super().build(datamodule)
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
