"""The NSFSE LightningModule (docs/methods.md §4): features, the score layer over `scorer`, the losses,
evaluation details."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import ComposedQueryBatch, Text, TripletBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders.composers import GatedResidualComposer
from fgbench.encoders.layers import masked_max, masked_softmax, zero_padding
from fgbench.features import STORE_DTYPES, Features, length_buckets
from fgbench.losses import same_target_mask
from fgbench.losses.contrastive import diagonal_cross_entropy
from fgbench.losses.multi_similarity import DynamicThreshold, multi_similarity_ns
from fgbench.optim import OptimConfig
from fgbench.pairwise import PairwiseMethod
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method

from .config import (
    CLIP_VARIANT,
    MIN_RERANK_K,
    NEG_STATS,
    PROFILES,
    PROVENANCE,
    SCORE_TERMS,
    THRESHOLDS,
    NSFSEConfig,
)
from .encoders import clip_encoders, cnn_bigru
from .scorer import EPS, CandidateSets, QuerySets, matrix_terms, pair_terms


@register_method("nsfse")
class NSFSE(PairwiseMethod):
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

    published_as: ClassVar[str] = "NSFSE"  # results/published.csv
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
            store_dtype=hp.store_dtype,
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
        self.composer: GatedResidualComposer | None = None
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
        return hp.optim.with_lr_mult({t: hp.backbone_lr_mult for t in towers})

    @property
    def variant(self) -> str:
        return "paper" if self.clip_path is None else CLIP_VARIANT

    # -- building ----------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        """Backbones and tokenizer (CNN + BiGRU over the training words, or CLIP), projections, composer."""
        if self.composer is not None:
            return
        hp = self.hp
        if self.clip_path is None:
            enc = cnn_bigru(hp, data, self.weights_path, self.glove_path)
        else:
            enc = clip_encoders(hp, data, self.clip_path)
        image, text, self.word_init, self.cls_tokens = enc.image, enc.text, enc.word_init, enc.cls_tokens
        if self.freeze_backbone:
            image.requires_grad_(False)
            if self.clip_path is not None:
                text.requires_grad_(False)
        self.image_encoder, self.text_encoder = image, text
        self.image_fc = nn.Linear(image.out_dim, hp.embed_dim)
        self.global_fc = nn.Linear(image.out_dim, hp.embed_dim)
        text_dim = int(text.out_dim)
        self.text_fc = nn.Identity() if text_dim == hp.embed_dim else nn.Linear(text_dim, hp.embed_dim)
        self.composer = GatedResidualComposer(hp.embed_dim, hp.init_a)
        self.processor = enc.tower.processor(enc.tokenizer, data.tiny_image_size)
        self.train(self.training)  # a frozen backbone joins in eval mode

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
            raise RuntimeError("nsfse: call build(datamodule.info()) first (Trainer.setup does)")
        out = self.image_encoder(visual)
        tokens, mask = out.tokens[:, self.cls_tokens :], out.mask[:, self.cls_tokens :]
        return zero_padding(self.image_fc(tokens), mask), mask, self.global_fc(out.glob)

    def text_sets(self, text: Text) -> tuple[Tensor, Tensor, Tensor]:
        """(W [B,L,d], mask Bool[B,L], t [B,d] = max-pool of W) of a batch of texts."""
        if self.text_encoder is None or self.text_fc is None:
            raise RuntimeError("nsfse: call build(datamodule.info()) first (Trainer.setup does)")
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

    def pairwise(self, q: Tensor, qs: QuerySets, g: Tensor, cs: CandidateSets) -> Tensor:
        """Full scores s of every query against every candidate, [n_q, n_c]."""
        terms = matrix_terms(qs, cs, self.hp.attn_scale, self.terms, self.hp.score_chunk)
        return self.combine(q @ g.T, terms)

    def aligned(self, q: Tensor, qs: QuerySets, g: Tensor, cs: CandidateSets) -> Tensor:
        """Full scores s of aligned pairs (query i with candidate i), [n]."""
        terms = pair_terms(qs, cs, self.hp.attn_scale, self.terms, self.hp.score_chunk)
        return self.combine((q * g).sum(-1), terms)

    @staticmethod
    def unpack(q: Features, g: Features) -> tuple[Tensor, QuerySets, Tensor, CandidateSets]:
        """fp32 scorer inputs from stored features."""
        if any(t is None for t in (q.glob, q.tok, q.mask, g.glob, g.tok, g.mask)):
            raise ValueError("nsfse: features need glob, tok and mask (encode_queries / encode_gallery)")
        assert q.glob is not None and q.tok is not None and q.mask is not None
        assert g.glob is not None and g.tok is not None and g.mask is not None
        qs = QuerySets(q.tok.float(), q.mask, q.aux["t"].float(), q.aux["rho"].float())
        return q.glob.float(), qs, g.glob.float(), CandidateSets(g.tok.float(), g.mask)

    def fine_scores(self, q: Features, g: Features) -> Tensor:
        """The full score s of every pair from stored features, [n_q, n_g], in fp32 whatever the trainer's
        autocast (`bucketed` when s_cross is on and `score_buckets`)."""
        with torch.autocast(q.index.device.type, enabled=False):
            if self.hp.score_buckets and "cross" in self.terms:
                return self.bucketed(*self.unpack(q, g))
            return self.pairwise(*self.unpack(q, g))

    def fine_pairs(self, q: Features, g: Features) -> Tensor:
        """The full score s of aligned pairs from stored features, [n], in fp32."""
        with torch.autocast(q.index.device.type, enabled=False):
            return self.aligned(*self.unpack(q, g))

    def bucketed(self, q: Tensor, qs: QuerySets, g: Tensor, cs: CandidateSets) -> Tensor:
        """`pairwise` [n_q, n_c] with the queries grouped by word extent (`length_buckets`), each group's
        words cut to its own length, so s_cross multiplies no padded word (exact: later words are masked)."""
        cs, glob = cs.prepared(), q @ g.T
        out = torch.empty_like(glob)
        for qi, n in length_buckets(qs.word_mask):
            sub = QuerySets(qs.words[qi, :n], qs.word_mask[qi, :n], qs.text[qi], qs.context[qi])
            terms = matrix_terms(sub, cs, self.hp.attn_scale, self.terms, self.hp.score_chunk)
            out[qi] = self.combine(glob[qi], terms)
        return out

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
        out = {"bbc": diagonal_cross_entropy(self.logit_scale.exp() * S, others)}
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
    def encode_queries(self, batch: ComposedQueryBatch) -> Features:
        q, qs = self.query_sets(batch.reference, batch.text)
        return Features(
            index=batch.index,
            glob=q.float(),
            tok=self.stored(qs.words),
            mask=qs.word_mask,
            aux={"t": qs.text.float(), "rho": qs.context.float()},
        )

    def encode_gallery(self, batch: VisualBatch) -> Features:
        g, cs = self.candidate_sets(batch.visual)
        return Features(index=batch.index, glob=g.float(), tok=self.stored(cs.grid), mask=cs.grid_mask)

    def run_details(self) -> dict[str, Any]:
        """The variant and the switches this run used."""
        return {
            "variant": self.variant,
            "nsfse": {
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
            },
        }
