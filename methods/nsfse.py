"""NSFSE: a negative-sensitive framework with semantic enhancement for composed image retrieval (Wang et al.,
IEEE TMM 26:7608-7621, 2024), docs/methods.md §4.

**A re-implementation from the paper's description.** NSFSE's code is not public and only part of its
abstract is readable, so everything below the abstract's level is our reading (docs/methods.md §4, marked
[inf] there; §11 lists the threshold and the loss as the least certain part of the suite). The published
numbers it is compared with are second-hand (a later paper by the same first author; published.csv `verified =
no`), and FashionIQ's protocol for them is not established (`protocol: unknown`, so no FashionIQ leaderboard
row is compared with them). Nothing here claims to reproduce the paper.

The model (d = 512 in the paper profile; λ = `attn_scale` = 10):
- encoders: an image grid V [B,N,d] (ResNet-50 layer4 7x7 cells -> Linear 2048->d) and the global v = its
  own Linear 2048->d on the pooled feature; words W [B,L,d] from 300-d embeddings -> BiGRU 2x256, the
  sentence t = max-pool of W over valid words. Word embeddings start from GloVe when `glove_path`
  is given, else at random; result.json records which (`details.nsfse.word_init`).
- composition: q = normalise(TIRG(v_r, t)), with `methods.tirg.Composer` (docs/methods.md §9).
- semantic enhancement, query side: A = softmax_n(λ·Ŵ V̂_rᵀ); infused words W̃ = W + A V_r (`infusion`);
  reference context ρ = Σ_n β_n V_r,n, β = softmax_n(λ·t̂·V̂_r,n). Candidate side:
  α_l = softmax_n(λ·ŵ̃_l·V̂_c,n), c_l = Σ_n α_l,n V_c,n, s_cross = masked mean_l cos(w̃_l, c_l);
  γ = softmax_n(λ·t̂·V̂_c,n), κ = Σ_n γ_n V_c,n, s_vis = cos(ρ, κ); s_glob = q·v̂_c;
  s = s_glob + w1·s_vis + w2·s_cross (w1 = w2 = 1; `learn_weights`).
- losses: L = L_bbc + λ_ns·L_ns (λ_ns = `loss_weights["ns"]`, default 1). L_bbc = CE(exp(ℓ)·S, diagonal)
  over the batch's pairwise scores S, ℓ learnable from 2.659 (ARTEMIS). L_ns = the Multi-Similarity loss
  around θ with a = 2, b = 50 (`fgbench.losses.multi_similarity`); positives P_i = the diagonal plus other
  items with the same target. θ: `dynamic` = the equal-z point (σ_n μ_p + σ_p μ_n)/(σ_p + σ_n) of the batch's
  positive and negative score statistics (`neg_stats`: all, or the 5 hardest per row), EMA-smoothed
  (momentum 0.9, `ema`), without gradient; `fixed` = 0.5; `none` removes L_ns.
- test time: pairwise scores in chunks of [b_q, b_g, L, N]; ‖c_l‖² = α_lᵀ(V_c V_cᵀ)α_l and
  ‖κ‖² = γᵀ(V_c V_cᵀ)γ come from the Gram matrix, so c_l and κ are never built. Token sets are stored in bf16
  and scored in fp32. `rerank_k` (≥ 50, because R@50 is reported) ranks by s_glob and re-scores each query's
  top k with s (Fashion200K's ≈10⁹ pairs); result.json records k.

What comes from where:
- [text] (abstract) composition and alignment in one model; cross-modal affinities infused into localized
  textual features, then a text-guided attention; a negative-sensitive loss with a threshold between the
  positive and negative similarity distributions. The numbers are at ARTEMIS level: a pre-CLIP CNN + RNN.
- [inf] (docs/methods.md §4) everything above that is not in the abstract: the encoders, λ, the three score
  terms
  and their weights, L_bbc, the Multi-Similarity form and its a, b, the equal-z threshold, its EMA and
  statistics, the fixed θ = 0.5, and ARTEMIS's recipe (AdamW lr 5e-4 halved every 10 epochs, CNN at 0.1x,
  50 epochs, batch 32, pad to square -> 256 -> random 224 crop + h-flip / centre crop).
- our reading, below the level of docs/methods.md: v has its own projection (`global_fc`), not the grid's; the
  BiGRU runs over `<bos> words <eos>`, and those two positions count as words; padded words of W̃ are zeroed
  after the infusion; AdamW's weight decay 0.01; `mask_same_target` (on) also drops same-target items from
  L_bbc's softmax, as the TIRG port does; a frozen backbone (`freeze_backbone`) is kept in eval mode; the
  tiny profile (TinyCNN grid, BiGRU 2x32, d = 64).
- variant, **not from the paper**: `clip_path` swaps the encoders for the CLIP towers of a local folder
  (V = the projected patch tokens, v = the projected CLS, W = the projected text tokens; frozen by default,
  as features). docs/methods.md names CLIP RN50x4, which transformers does not provide: any local transformers
  CLIP works. result.json says `variant: clip (not from the paper)`, and so does its provenance note.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from fgbench.data.batches import ComposedQueryBatch, Text, TripletBatch, Visual, VisualBatch
from fgbench.data.module import RetrievalDataModule
from fgbench.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MethodProcessor,
    TargetPad,
    Tokenizer,
    WordTokenizer,
    build_image_encoder,
    build_text_encoder,
    register_preset,
)
from fgbench.encoders.layers import masked_max, masked_softmax, zero_padding
from fgbench.encoders.tokenizers import SPECIALS
from fgbench.evaluation import EvalResult, EvalSpec
from fgbench.features import STORE_DTYPES, Features, length_buckets
from fgbench.losses import same_target_mask
from fgbench.losses.multi_similarity import DynamicThreshold, multi_similarity_ns
from fgbench.method import RetrievalMethod
from fgbench.optim import OptimConfig
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method
from methods.clip_ft import ClipProfile, build_tokenizer, build_towers
from methods.tirg import Composer

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
EPS = 1e-8  # floor of a norm


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

    image_encoder: str = "tiny_cnn"  # fgbench image encoder giving a grid of cells
    image_kwargs: dict[str, Any] = field(default_factory=dict)  # its arguments (timm: model_name)
    image_size: tuple[int, int] | None = None  # processor (H, W); None: the tiny size (CLIP: its own)
    imagenet_norm: bool = False  # ImageNet mean/std (pretrained CNN) instead of 0.5/0.5
    train_transform: str = "none"  # processor preset at training time
    test_transform: str = "none"  # processor preset at test time
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
    optimizer: str = "adamw"  # fgbench.optim OPTIMIZERS key
    lr: float = 1e-3  # learning rate of the new layers
    backbone_lr_mult: float = 1.0  # lr multiplier of the CNN (and of unfrozen CLIP towers)
    weight_decay: float = 0.01  # weight decay
    schedule: str = "cosine"  # fgbench.optim SCHEDULES key
    step_epochs: int = 10  # "step" schedule: epochs between decays
    step_gamma: float = 0.5  # "step" schedule: decay factor


PROFILES: dict[str, NSFSEConfig] = {
    "tiny": NSFSEConfig(),
    "paper": NSFSEConfig(
        image_encoder="timm",
        image_kwargs={"model_name": "resnet50"},
        image_size=(224, 224),
        imagenet_norm=True,
        train_transform="square_crop_flip",
        test_transform="square_center_crop",
        embed_dim=512,
        word_dim=300,
        text_hidden=256,
        max_words=100_000,
        max_len=32,
        lr=5e-4,
        backbone_lr_mult=0.1,
        schedule="step",
    ),
}


# -- the enhanced scorer ------------------------------------------------------------------------------------


@dataclass
class QuerySets:
    """The query side of the enhanced score (fp32)."""

    words: Tensor  # W̃ [n, L, d]: infused word features
    word_mask: Tensor  # Bool[n, L]
    text: Tensor  # t̂ [n, d]: unit sentence vector
    context: Tensor  # ρ [n, d]: text-guided reference context


@dataclass
class CandidateSets:
    """The candidate side of the enhanced score (fp32), with its per-candidate statistics once `prepared`."""

    grid: Tensor  # V_c [n, N, d]
    grid_mask: Tensor  # Bool[n, N]
    inv_norm: Tensor | None = None  # 1/‖V_c,n‖ [n, N]
    gram: Tensor | None = None  # V_c V_cᵀ [n, N, N]

    def prepared(self) -> CandidateSets:
        """These sets with `inv_norm` and `gram` computed (once per gallery block, not per query chunk)."""
        if self.inv_norm is not None and self.gram is not None:
            return self
        V = self.grid
        return CandidateSets(V, self.grid_mask, 1.0 / safe_norm(V), V @ V.transpose(1, 2))

    def slice(self, sl: slice) -> CandidateSets:
        pick = (t if t is None else t[sl] for t in (self.inv_norm, self.gram))
        return CandidateSets(self.grid[sl], self.grid_mask[sl], *pick)


# einsum layouts: "matrix" scores every query against every candidate, "pairs" aligned pairs
_EQ = {
    "matrix": {
        "words": "qld,gnd->qgln",
        "gram_l": "qgln,gnm->qglm",
        "vec": "qd,gnd->qgn",
        "gram": "qgn,gnm->qgm",
    },
    "pairs": {"words": "pld,pnd->pln", "gram_l": "pln,pnm->plm", "vec": "pd,pnd->pn", "gram": "pn,pnm->pm"},
}


def safe_norm(x: Tensor, dim: int = -1) -> Tensor:
    return x.norm(dim=dim).clamp_min(EPS)


def enhanced_terms(
    qs: QuerySets, cs: CandidateSets, lam: float, terms: Sequence[str], layout: str = "matrix"
) -> dict[str, Tensor]:
    """s_vis and/or s_cross (docs/methods.md §4), [n_q, n_c] ("matrix") or [n] ("pairs"), via the Gram
    shortcut.

    With P_ln = ŵ̃_l·V_c,n: ŵ̃_l·c_l = Σ_n α_ln P_ln and ‖c_l‖² = α_lᵀ G α_l, G = V_c V_cᵀ; likewise for κ.
    """
    eq = _EQ[layout]
    matrix = layout == "matrix"

    def qv(x: Tensor) -> Tensor:  # a per-query tensor, broadcast over candidates
        return x[:, None] if matrix else x

    def gv(x: Tensor) -> Tensor:  # a per-candidate tensor, broadcast over queries
        return x[None] if matrix else x

    cs = cs.prepared()
    V, vmask, inv, gram = cs.grid, cs.grid_mask, cs.inv_norm, cs.gram
    assert inv is not None and gram is not None
    out: dict[str, Tensor] = {}
    if "cross" in terms:
        P = torch.einsum(eq["words"], F.normalize(qs.words, dim=-1, eps=EPS), V)  # [.., L, N]
        alpha = masked_softmax(lam * P * gv(inv)[..., None, :], gv(vmask)[..., None, :])
        num = (alpha * P).sum(-1)  # ŵ̃_l · c_l
        sq = (torch.einsum(eq["gram_l"], alpha, gram) * alpha).sum(-1)  # ‖c_l‖²
        cos = num / sq.clamp_min(EPS * EPS).sqrt()
        m = qv(qs.word_mask).to(cos.dtype)
        out["cross"] = (cos * m).sum(-1) / m.sum(-1).clamp_min(1.0)
    if "vis" in terms:
        gamma = masked_softmax(lam * torch.einsum(eq["vec"], qs.text, V) * gv(inv), gv(vmask))
        num = (gamma * torch.einsum(eq["vec"], qs.context, V)).sum(-1)  # ρ · κ
        sq = (torch.einsum(eq["gram"], gamma, gram) * gamma).sum(-1)  # ‖κ‖²
        out["vis"] = num / (sq.clamp_min(EPS * EPS).sqrt() * qv(safe_norm(qs.context)))
    return out


def _take_q(qs: QuerySets, sl: slice) -> QuerySets:
    return QuerySets(qs.words[sl], qs.word_mask[sl], qs.text[sl], qs.context[sl])


def chunked_terms(
    qs: QuerySets, cs: CandidateSets, lam: float, terms: Sequence[str], layout: str, budget: int
) -> dict[str, Tensor]:
    """`enhanced_terms` in chunks whose [.., L, N] tensors hold at most `budget` elements each."""
    if not terms:
        return {}
    cs = cs.prepared()
    per_pair = qs.words.shape[1] * max(cs.grid.shape[1], 1)
    pairs = max(1, budget // per_pair)
    nq, nc = len(qs.words), len(cs.grid)
    if layout == "pairs":
        parts = [
            enhanced_terms(
                _take_q(qs, slice(i, i + pairs)), cs.slice(slice(i, i + pairs)), lam, terms, layout
            )
            for i in range(0, nq, pairs)
        ]
        return {t: torch.cat([p[t] for p in parts]) for t in terms}
    cols = min(nc, pairs)
    rows = max(1, pairs // max(cols, 1))
    out_rows: list[dict[str, Tensor]] = []
    for i in range(0, nq, rows):
        q = _take_q(qs, slice(i, i + rows))
        blocks = [enhanced_terms(q, cs.slice(slice(j, j + cols)), lam, terms) for j in range(0, nc, cols)]
        out_rows.append({t: torch.cat([b[t] for b in blocks], dim=1) for t in terms})
    return {t: torch.cat([r[t] for r in out_rows]) for t in terms}


# -- GloVe ------------------------------------------------------------------------------------------------


def load_glove(path: str | Path, words: Sequence[str], dim: int) -> tuple[Tensor, Tensor]:
    """Vectors of `words` from a GloVe text file (`word v1 .. v_dim` per line): ([len(words), dim], found)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"nsfse: glove_path {str(path)!r} is not a file (GloVe text: 'word v1 .. vD')"
        )
    row = {w: i for i, w in enumerate(words)}
    vectors = torch.zeros(len(words), dim)
    found = torch.zeros(len(words), dtype=torch.bool)
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in row:
                continue
            values = rest.split()
            if len(values) != dim:
                raise ValueError(
                    f"{path}:{line_no}: {len(values)} values for {word!r}, expected word_dim = {dim}"
                )
            vectors[row[word]] = torch.tensor([float(v) for v in values])
            found[row[word]] = True
    return vectors, found


# -- the method ---------------------------------------------------------------------------------------------


@register_method("nsfse")
class NSFSE(RetrievalMethod):
    """NSFSE: TIRG composition plus a text-guided pairwise score; L_bbc + the negative-sensitive loss.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        threshold: θ of L_ns: "dynamic" (equal-z point, EMA), "fixed" (`fixed_theta`) or "none" (no L_ns).
        neg_stats: negatives of the dynamic θ's statistics: "all" or "top5" (the 5 hardest per row).
        ema: smooth the dynamic θ's statistics over batches (False: this batch's only).
        infusion: infuse the reference's affinities into the words (W̃ = W + A V_r); False keeps W.
        score_terms: "glob", "glob+vis" or "glob+vis+cross" (the full score).
        learn_weights: (w1, w2) learnable instead of fixed.
        mask_same_target: other items with the same target are positives, not negatives.
        freeze_backbone: freeze the CNN (or the CLIP towers) and keep it in eval mode; None: the CNN trains
            (ARTEMIS), CLIP towers stay frozen (features).
        weights_path: local ImageNet weights of the timm CNN (required by the paper profile).
        glove_path: a local GloVe text file initialising the word embeddings (word_dim must match).
        clip_path: the CLIP-feature variant (not from the paper): a local transformers CLIP folder or name.
        rerank_k: rank by s_glob and re-score each query's top k (>= 50) with the full score.
        optim: optimiser and schedule; default from the profile.
        loss_weights: weights of the "bbc" and "ns" terms (default 1; "ns" is λ_ns).
        overrides, **fields: any `NSFSEConfig` field, overriding the profile's preset.
    """

    name: ClassVar[str] = "nsfse"
    provenance: ClassVar[str] = PROVENANCE
    tasks: ClassVar[frozenset[str]] = frozenset({"composed"})

    def __init__(
        self,
        profile: str = "tiny",
        threshold: Literal["dynamic", "fixed", "none"] = "dynamic",
        neg_stats: Literal["all", "top5"] = "all",
        ema: bool = True,
        infusion: bool = True,
        score_terms: str = "glob+vis+cross",
        learn_weights: bool = False,
        mask_same_target: bool = True,
        freeze_backbone: bool | None = None,
        weights_path: str | None = None,
        glove_path: str | None = None,
        clip_path: str | None = None,
        rerank_k: int | None = None,
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        hp = resolve_profile(PROFILES, profile, merge_overrides(overrides, fields), "nsfse")
        for name, value, allowed in (
            ("threshold", threshold, THRESHOLDS),
            ("neg_stats", neg_stats, NEG_STATS),
            ("score_terms", score_terms, tuple(SCORE_TERMS)),
            ("store_dtype", hp.store_dtype, tuple(STORE_DTYPES)),
        ):
            if value not in allowed:
                raise ValueError(f"nsfse: {name}={value!r}; expected one of {', '.join(allowed)}")
        if rerank_k is not None and rerank_k < MIN_RERANK_K:
            raise ValueError(
                f"nsfse: rerank_k={rerank_k}; expected None or an integer >= {MIN_RERANK_K} (R@50 is scored)"
            )
        if profile == "paper" and clip_path is None and weights_path is None:
            raise ValueError("nsfse: the paper profile needs weights_path (local ImageNet ResNet-50 weights)")
        super().__init__(
            profile=profile,
            optim=optim or self._optim(hp, clip_path),
            loss_weights=loss_weights,
            rerank_k=rerank_k,
        )
        self.save_hyperparameters()
        self.hp = hp
        self.threshold_mode, self.neg_stats, self.ema, self.infusion = threshold, neg_stats, ema, infusion
        self.score_terms, self.terms = score_terms, SCORE_TERMS[score_terms]
        self.learn_weights, self.mask_same_target = learn_weights, mask_same_target
        self.freeze_backbone = (clip_path is not None) if freeze_backbone is None else freeze_backbone
        self.weights_path, self.glove_path, self.clip_path = weights_path, glove_path, clip_path
        if clip_path is not None:  # the CLIP-feature variant says so in result.json's provenance note
            self.provenance = f"{PROVENANCE}; CLIP-feature variant, not from the paper"  # type: ignore[misc]
        self.word_init = "random"
        self.cls_tokens = 0  # leading non-grid tokens of the image encoder (CLIP's CLS)
        self.image_encoder: nn.Module | None = None
        self.text_encoder: nn.Module | None = None
        self.image_fc: nn.Linear | None = None
        self.global_fc: nn.Linear | None = None
        self.text_fc: nn.Module | None = None
        self.composer: Composer | None = None
        self.logit_scale = nn.Parameter(torch.tensor(float(hp.init_logit_scale)))
        weights = torch.tensor([float(w) for w in hp.init_weights])
        if learn_weights:
            self.score_weights = nn.Parameter(weights)
        else:
            self.register_buffer("score_weights", weights)
        self.threshold: DynamicThreshold | None = None
        if threshold != "none":
            self.threshold = DynamicThreshold(
                mode=threshold,
                neg_stats=neg_stats,
                ema=ema,
                momentum=hp.ema_momentum,
                fixed_theta=hp.fixed_theta,
            )

    @staticmethod
    def _optim(hp: NSFSEConfig, clip_path: str | None) -> OptimConfig:
        towers = ("image_encoder.", "text_encoder.") if clip_path is not None else ("image_encoder.",)
        mult = {t: hp.backbone_lr_mult for t in towers}
        return OptimConfig.from_profile(hp, lr_mult=mult, gamma=hp.step_gamma)

    @property
    def variant(self) -> str:
        return "paper" if self.clip_path is None else CLIP_VARIANT

    # -- building ----------------------------------------------------------------------------------------
    def build(self, dm: RetrievalDataModule) -> None:
        """Backbones and tokenizer (CNN + BiGRU over the training words, or CLIP), projections, composer."""
        if self.composer is not None:
            return
        hp = self.hp
        if self.clip_path is None:
            image, text, tokenizer, size, mean_std = self._cnn_bigru(dm)
        else:
            image, text, tokenizer, size, mean_std = self._clip(dm)
        if self.freeze_backbone:
            image.requires_grad_(False)
            if self.clip_path is not None:
                text.requires_grad_(False)
        self.image_encoder, self.text_encoder = image, text
        self.image_fc = nn.Linear(image.out_dim, hp.embed_dim)
        self.global_fc = nn.Linear(image.out_dim, hp.embed_dim)
        text_dim = int(text.out_dim)
        self.text_fc = nn.Identity() if text_dim == hp.embed_dim else nn.Linear(text_dim, hp.embed_dim)
        self.composer = Composer(hp.embed_dim, hp.init_a)
        self.processor = MethodProcessor(
            image_size=size,
            mean=mean_std[0],
            std=mean_std[1],
            train_transform=hp.train_transform,
            test_transform=hp.test_transform,
            tokenizer=tokenizer,
        )
        self.train(self.training)  # a frozen backbone joins in eval mode

    def _cnn_bigru(self, dm: RetrievalDataModule) -> tuple[nn.Module, nn.Module, Tokenizer, Any, Any]:
        """The paper's encoders: a timm/tiny CNN grid and a BiGRU over the training vocabulary."""
        hp = self.hp
        kwargs = dict(hp.image_kwargs)
        if self.weights_path is not None:
            kwargs["pretrained_path"] = self.weights_path
        image = build_image_encoder(hp.image_encoder, **kwargs)
        tokenizer = WordTokenizer.build(dm.train_texts(), hp.max_words, hp.max_len)
        text = build_text_encoder(
            "gru",
            vocab_size=tokenizer.vocab_size,
            word_dim=hp.word_dim,
            hidden=hp.text_hidden,
            bidirectional=True,
            pool="max",
        )
        if self.glove_path is not None:
            vectors, found = load_glove(self.glove_path, tokenizer.words, hp.word_dim)
            rows = torch.arange(len(tokenizer.words)) + len(SPECIALS)
            with torch.no_grad():
                text.embed.weight[rows[found]] = vectors[found]
            self.word_init = f"glove ({int(found.sum())} of {len(found)} words): {self.glove_path}"
        mean_std = (IMAGENET_MEAN, IMAGENET_STD) if hp.imagenet_norm else ((0.5,) * 3, (0.5,) * 3)
        return image, text, tokenizer, hp.image_size or dm.tiny_image_size, mean_std

    def _clip(self, dm: RetrievalDataModule) -> tuple[nn.Module, nn.Module, Tokenizer, Any, Any]:
        """The variant's encoders (not from the paper): CLIP towers and BPE tokenizer from `clip_path`."""
        assert self.clip_path is not None
        hp = self.hp
        cfg = ClipProfile(pretrained=True, max_len=min(77, hp.max_len + 2), image_size=hp.image_size)
        tokenizer = build_tokenizer(cfg, dm, self.clip_path)
        image, text = build_towers(cfg, tokenizer, hp.image_size, self.clip_path)  # type: ignore[arg-type]
        self.cls_tokens = 1
        self.word_init = "clip"
        size = tuple(image.vision.embeddings.image_size)
        return image, text, tokenizer, size, (CLIP_MEAN, CLIP_STD)

    def train(self, mode: bool = True) -> NSFSE:
        """A frozen backbone always runs in eval mode (fixed BatchNorm statistics, no dropout)."""
        super().train(mode)
        if self.freeze_backbone and self.image_encoder is not None:
            self.image_encoder.eval()
            if self.clip_path is not None and self.text_encoder is not None:
                self.text_encoder.eval()
        return self

    # -- features ----------------------------------------------------------------------------------------
    def image_sets(self, visual: Visual) -> tuple[Tensor, Tensor, Tensor]:
        """(V [B,N,d], mask Bool[B,N], v [B,d] unnormalised global) of a batch of images."""
        if self.image_encoder is None or self.image_fc is None or self.global_fc is None:
            raise RuntimeError("nsfse: call build(datamodule) first (Trainer.setup does)")
        out = self.image_encoder(visual)
        tokens, mask = out.tokens[:, self.cls_tokens :], out.mask[:, self.cls_tokens :]
        return zero_padding(self.image_fc(tokens), mask), mask, self.global_fc(out.glob)

    def text_sets(self, text: Text) -> tuple[Tensor, Tensor, Tensor]:
        """(W [B,L,d], mask Bool[B,L], t [B,d] = max-pool of W) of a batch of texts."""
        if self.text_encoder is None or self.text_fc is None:
            raise RuntimeError("nsfse: call build(datamodule) first (Trainer.setup does)")
        out = self.text_encoder(text)
        mask = out.mask
        W = zero_padding(self.text_fc(out.tokens), mask)
        return W, mask, masked_max(W, mask)

    def query_sets(self, reference: Visual, text: Text) -> tuple[Tensor, QuerySets]:
        """(q [B,d] unit composed query, the query side of the enhanced score)."""
        assert self.composer is not None
        lam = self.hp.attn_scale
        V, vmask, v = self.image_sets(reference)
        W, wmask, t = self.text_sets(text)
        q = F.normalize(self.composer(v, t), dim=-1)
        t_hat = F.normalize(t, dim=-1, eps=EPS)
        V_hat = F.normalize(V, dim=-1, eps=EPS)
        words = W
        if self.infusion:
            A = masked_softmax(lam * F.normalize(W, dim=-1, eps=EPS) @ V_hat.transpose(1, 2), vmask[:, None])
            words = zero_padding(W + A @ V, wmask)
        beta = masked_softmax(lam * (V_hat @ t_hat[:, :, None]).squeeze(-1), vmask)
        rho = (beta[:, :, None] * V).sum(1)
        return q, QuerySets(words=words, word_mask=wmask, text=t_hat, context=rho)

    def candidate_sets(self, visual: Visual) -> tuple[Tensor, CandidateSets]:
        """(v̂ [B,d] unit global, the candidate side of the enhanced score)."""
        V, mask, v = self.image_sets(visual)
        return F.normalize(v, dim=-1), CandidateSets(grid=V, grid_mask=mask)

    # -- scoring -----------------------------------------------------------------------------------------
    def combine(self, glob: Tensor, terms: dict[str, Tensor]) -> Tensor:
        """s = s_glob + w1·s_vis + w2·s_cross over the enabled terms."""
        s = glob
        for weight, name in zip(self.score_weights, ("vis", "cross"), strict=True):
            if name in terms:
                s = s + weight * terms[name]
        return s

    def pairwise(
        self, q: Tensor, qs: QuerySets, g: Tensor, cs: CandidateSets, layout: str = "matrix"
    ) -> Tensor:
        """Full scores s, [n_q, n_c] ("matrix") or [n] (aligned "pairs")."""
        glob = q @ g.T if layout == "matrix" else (q * g).sum(-1)
        terms = chunked_terms(qs, cs, self.hp.attn_scale, self.terms, layout, self.hp.score_chunk)
        return self.combine(glob, terms)

    @staticmethod
    def unpack(q: Features, g: Features) -> tuple[Tensor, QuerySets, Tensor, CandidateSets]:
        """fp32 scorer inputs from stored features."""
        if any(t is None for t in (q.glob, q.tok, q.mask, g.glob, g.tok, g.mask)):
            raise ValueError("nsfse: features need glob, tok and mask (encode_queries / encode_gallery)")
        assert q.glob is not None and q.tok is not None and q.mask is not None
        assert g.glob is not None and g.tok is not None and g.mask is not None
        qs = QuerySets(q.tok.float(), q.mask, q.aux["t"].float(), q.aux["rho"].float())
        return q.glob.float(), qs, g.glob.float(), CandidateSets(g.tok.float(), g.mask)

    def full_score(self, q: Features, g: Features, layout: str = "matrix") -> Tensor:
        """The full score from stored features, in fp32 whatever the trainer's autocast."""
        with torch.autocast(q.index.device.type, enabled=False):
            if layout == "matrix" and self.hp.score_buckets and "cross" in self.terms:
                return self.bucketed(*self.unpack(q, g))
            return self.pairwise(*self.unpack(q, g), layout=layout)

    def bucketed(self, q: Tensor, qs: QuerySets, g: Tensor, cs: CandidateSets) -> Tensor:
        """`pairwise` [n_q, n_c] with the queries grouped by word extent (`length_buckets`), each group's
        words cut to its own length, so s_cross multiplies no padded word (exact: later words are masked)."""
        cs, glob = cs.prepared(), q @ g.T
        out = torch.empty_like(glob)
        for qi, n in length_buckets(qs.word_mask):
            sub = QuerySets(qs.words[qi, :n], qs.word_mask[qi, :n], qs.text[qi], qs.context[qi])
            terms = chunked_terms(sub, cs, self.hp.attn_scale, self.terms, "matrix", self.hp.score_chunk)
            out[qi] = self.combine(glob[qi], terms)
        return out

    def score(self, q: Features, g: Features) -> Tensor:
        """The full score of every pair; with `rerank_k`, s_glob (the shortlist's coarse score)."""
        if self.rerank_k is not None:
            return super().score(q, g)
        return self.full_score(q, g)

    def score_pairs(self, q: Features, g: Features) -> Tensor:
        if self.rerank_k is not None:
            return super().score_pairs(q, g)
        return self.full_score(q, g, "pairs")

    def rescore_pairs(self, q: Features, g: Features) -> Tensor:
        """The full score of aligned pairs (the re-rank scorer of the s_glob shortlist)."""
        return self.full_score(q, g, "pairs")

    # -- training ----------------------------------------------------------------------------------------
    def ns_loss(self, S: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
        """(L_ns, θ) on a [B, B] score matrix; θ is detached (updated from S in training, dynamic mode)."""
        assert self.threshold is not None, "threshold='none' has no L_ns"
        theta = self.threshold(S.detach(), positives)
        return multi_similarity_ns(S, positives, theta, self.hp.ms_a, self.hp.ms_b), theta

    def losses(self, batch: TripletBatch) -> dict[str, Tensor]:
        q, qs = self.query_sets(batch.reference, batch.text)
        g, cs = self.candidate_sets(batch.target)
        S = self.pairwise(q, qs, g, cs).float()
        n = len(S)
        labels = batch.target_label if self.mask_same_target else torch.arange(n, device=S.device)
        others = same_target_mask(labels)
        logits = (self.logit_scale.exp() * S).masked_fill(others, float("-inf"))
        out = {"bbc": F.cross_entropy(logits, torch.arange(n, device=S.device))}
        if self.threshold is not None:
            eye = torch.eye(n, dtype=torch.bool, device=S.device)
            out["ns"] = self.ns_loss(S, others | eye)[0]
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        loss = super().training_step(batch, batch_idx)
        if self.threshold is not None:
            self.log("train/theta", self.threshold.theta, batch_size=len(batch.index))
        return loss

    # -- evaluation --------------------------------------------------------------------------------------
    def _store(self, t: Tensor) -> Tensor:
        return t.to(STORE_DTYPES[self.hp.store_dtype])

    def encode_queries(self, batch: ComposedQueryBatch) -> Features:
        q, qs = self.query_sets(batch.reference, batch.text)
        return Features(
            index=batch.index,
            glob=q.float(),
            tok=self._store(qs.words),
            mask=qs.word_mask,
            aux={"t": qs.text.float(), "rho": qs.context.float()},
        )

    def encode_gallery(self, batch: VisualBatch) -> Features:
        g, cs = self.candidate_sets(batch.visual)
        return Features(index=batch.index, glob=g.float(), tok=self._store(cs.grid), mask=cs.grid_mask)

    def evaluate_features(self, q: Features, g: Features, spec: EvalSpec) -> EvalResult:
        """The evaluator's result, labelled with the variant and the switches this run used."""
        result = super().evaluate_features(q, g, spec)
        result.details["variant"] = self.variant
        result.details["nsfse"] = {
            "threshold": self.threshold_mode,
            "theta": None if self.threshold is None else float(self.threshold.theta),
            "neg_stats": self.neg_stats,
            "ema": self.ema,
            "infusion": self.infusion,
            "score_terms": self.score_terms,
            "score_weights": [float(w) for w in self.score_weights],
            "learn_weights": self.learn_weights,
            "word_init": self.word_init,
            "freeze_backbone": self.freeze_backbone,
        }
        return result
