"""MMRef: multi-modal reference learning for fine-grained text-to-image retrieval (Ma et al., IEEE TMM 27,
2025; arXiv 2504.07718), docs/methods.md §1.

**A re-implementation from the paper's description**: MMRef's code is not public, so this module builds our
reading of the paper's text on IRRA's backbone (`fgbench.clip_mlm.ClipMLM`, which `irra` subclasses too), and
`mmref` differs from `irra` only by MMRef's own modules. It does not claim to reproduce the paper's numbers.

One learnable reference (a proxy) per training identity or class, R ∈ R^{m×d}, gathers that object's image and
text evidence:
- Global Fusion (GF): L_Fuse = (1/2n) Σ_k −log softmax_c(cos(R_c, sg(e_k))/τ_f)[y_k] over the 2n batch globals
  e_k ∈ {f_v} ∪ {f_t}; its gradient reaches R only.
- Local Reconstruction (LR): the masked caption's tokens Q go through one pre-LN block
  H = FFN2(MCA(FFN1(MSA(Q)), K, V)) whose keys and values are n_r reference tokens (a linear map of R[y] to
  n_r·d, reshaped), then IRRA's MLM head and CE on the masked words; gradient to R, the block and the text
  encoder. The masking and the masked-word loss are IRRA's (`ClipMLM.masked_token_loss`, with `cross_former`
  attending to the reference tokens instead of the image tokens).
- Reference-Guided Representation Learning (RGRL): the same classification against sg(R) (τ_g); gradient to
  the encoders only. Option `rgrl_kl`: a symmetric KL between the image's and the text's reference
  distributions of matched pairs.
- L = L_align (IRRA's SDM, or InfoNCE) + L_Fuse + L_LR + L_RGRL, each weight configurable (`loss_weights`);
  IRRA's ID loss and image-conditioned IRR are not part of MMRef.
- Test time: each item also stores aux `ref` = r(x) = normalise(softmax(cos(x, R)/τ_r)) (bf16); the coarse
  ranking is S0 = f̂_t·f̂_v, and each query's top-k is re-scored S0 + λ⟨r(q), r(g)⟩ through the evaluator's
  re-rank path (result.json records k and the re-rank time). Class-level protocols recompute r from the
  pooled text vector.

What comes from where (docs/methods.md marks):
- [text/2nd] the references as proxies of the training objects; GF with S_Fuse = cos(R, sg(E)) and
  L_Fuse = (1/2n)·L_CL; LR as FFN2(MCA(FFN1(MSA(Q)), K, V)) with K/V from the references, an MLM head and
  CE on the masked words; RGRL; reference-based refinement of the top-k at inference; "proxy learning".
- [inf] everything else: IRRA's backbone and recipe (CLIP ViT-B/16 at 384x128, SDM τ = 0.02, Adam eps 1e-3,
  lr 1e-5 with x5 for R, the LR block and the MLM head, 5-epoch warm-up then cosine, batch 64, 60 epochs);
  d = 512; m = the number of training identities/classes (f30k/coco: every training image is its own
  object); the class-mean initialisation of R; L_CL as a softmax cross-entropy over the references; the RGRL
  loss as the same form with the stop-gradient moved to R; n_r = 4 reference tokens; τ_f = τ_g = τ_r = 0.05;
  the refinement S0 + λ⟨r(q), r(g)⟩ with k = 50, λ = 0.5 (not tuned: docs/methods.md says to tune them once on
  CUHK-PEDES val, which `experiments.tune_rerank` does from trained runs; on synth-person val the tiny
  profile preferred λ = 0.1, k flat from 10 to 100, and gained nothing on test, results/synthetic-tiny.md);
  `ref_space=cosine` as the centred raw cosine vector, L2-normalised so ⟨r, r⟩ = 1 there too; the tiny
  profile learns L_align's τ (IRRA's `temperature_learnable`: the fixed 0.02 kept tiny towers near chance).
- our reading, below the level of docs/methods.md: the LR block is pre-LN residual (LN on Q before MSA, FFN1,
  MCA and FFN2, LN on the reference tokens, a final LN as IRRA's `ln_post`), width // 64 heads (8 at 512) and
  FFNs of 4x width, initialised as IRRA's cross-modal transformer; like IRRA's head, its self-attention does
  not mask padding. R is excluded from weight decay whatever `optim` says. The class-mean pass encodes the
  training pairs once at fit start (eval mode, test transform, no RNG drawn), shared across ranks by an
  all-reduce; a resumed run loads R from its checkpoint (the `references_ready` buffer says R is set).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from fgbench.clip_dual import CLIP_PATH, REID_OPTIM, REID_PAPER
from fgbench.clip_mlm import ClipMLM, ClipMLMConfig, init_mlm_head, init_stds, mlm_head
from fgbench.data.batches import (
    ComposedQueryBatch,
    PairBatch,
    TextBatch,
    VisualBatch,
    collate_pairs,
    move_batch,
)
from fgbench.data.module import DataInfo, RetrievalDataModule
from fgbench.features import Features
from fgbench.optim import OptimConfig
from fgbench.profiles import check_choice, merge_overrides
from fgbench.registry import register_method

REFS = "references"  # parameter name of R (excluded from weight decay by this substring)
ALIGN_LOSSES = {"sdm": "sdm", "infonce": "itc"}  # align_loss -> IRRA's loss name
REF_INITS = ("class_mean", "normal")
HEAD_LR_MULT = {REFS: 5.0, "lr_block": 5.0, "mlm_head": 5.0}
TEST_TIME = ("refine", "rerank_k", "lam", "ref_space")  # switches of the refinement only


def _softmax_space(cos: Tensor, tau: float) -> Tensor:
    return torch.softmax(cos / tau, dim=-1)


def _cosine_space(cos: Tensor, tau: float) -> Tensor:
    return cos - cos.mean(dim=-1, keepdim=True)


# ref_space -> map from cosines to the references [n, m] to the (unnormalised) reference vector
REF_SPACES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "softmax": _softmax_space,
    "cosine": _cosine_space,
}


@dataclass
class MMRefConfig(ClipMLMConfig):
    """MMRef's hyper-parameters in one profile: IRRA's fields (`ClipMLMConfig`; its `cmt_depth` unused: the LR
    block is one block) plus the references'."""

    tau_fuse: float = 0.05  # τ_f of L_Fuse
    tau_rgrl: float = 0.05  # τ_g of L_RGRL (and of rgrl_kl)
    tau_ref: float = 0.05  # τ_r of the test-time reference vector r(x) (ref_space=softmax)
    ref_init_std: float = 0.02  # std of R under ref_init=normal


def _no_decay_on_refs(cfg: OptimConfig) -> OptimConfig:
    """`cfg` with R among the no-decay names (docs/methods.md §1: R is excluded from weight decay)."""
    return cfg if REFS in cfg.no_decay else replace(cfg, no_decay=(*cfg.no_decay, REFS))


PROFILES: dict[str, MMRefConfig] = {
    "tiny": MMRefConfig(optim=_no_decay_on_refs(OptimConfig())),
    "paper": MMRefConfig(
        **REID_PAPER, optim=_no_decay_on_refs(replace(REID_OPTIM, lr_mult=dict(HEAD_LR_MULT)))
    ),
}


def reference_nce(x: Tensor, refs: Tensor, labels: Tensor, tau: float) -> Tensor:
    """(1/N) Σ_k −log softmax_c(cos(refs_c, x_k)/τ)[y_k]: each row of x classified over the references.

    L_Fuse is `reference_nce(sg(E), R, y, τ_f)` (gradient to R only), L_RGRL `reference_nce(E, sg(R), y, τ_g)`
    (gradient to the encoders only).
    """
    logits = F.normalize(x, dim=-1) @ F.normalize(refs, dim=-1).T / tau
    return F.cross_entropy(logits, labels)


def reference_kl(image: Tensor, text: Tensor, refs: Tensor, tau: float) -> Tensor:
    """½[KL(p_v ‖ p_t) + KL(p_t ‖ p_v)] of matched pairs' distributions over the references (rgrl_kl)."""
    refs = F.normalize(refs, dim=-1)
    log_v = F.log_softmax(F.normalize(image, dim=-1) @ refs.T / tau, dim=-1)
    log_t = F.log_softmax(F.normalize(text, dim=-1) @ refs.T / tau, dim=-1)
    kl_vt = F.kl_div(log_t, log_v, log_target=True, reduction="batchmean")
    kl_tv = F.kl_div(log_v, log_t, log_target=True, reduction="batchmean")
    return 0.5 * (kl_vt + kl_tv)


def _ffn(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


class LocalReconstruction(nn.Module):
    """MMRef's LR block: H = FFN2(MCA(FFN1(MSA(Q)), K, V)) as pre-LN residual sublayers, K = V = the reference
    tokens (`tokens(R[y])`: a linear map of each reference to `n_tokens` tokens of the same width)."""

    def __init__(self, width: int, n_tokens: int) -> None:
        super().__init__()
        heads = max(1, width // 64)
        self.n_tokens = n_tokens
        self.ref_tokens = nn.Linear(width, n_tokens * width)
        self.ln_msa, self.ln_ffn1, self.ln_mca, self.ln_kv, self.ln_ffn2, self.ln_post = (
            nn.LayerNorm(width) for _ in range(6)
        )
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffn1, self.ffn2 = _ffn(width), _ffn(width)
        # IRRA's initialisation of its cross-modal transformer (model/build.py), depth 1
        attn_std, proj_std, fc_std = init_stds(width, 1)
        for attn in (self.self_attn, self.cross_attn):
            nn.init.normal_(attn.in_proj_weight, std=attn_std)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
        for ffn in (self.ffn1, self.ffn2):
            nn.init.normal_(ffn[0].weight, std=fc_std)
            nn.init.normal_(ffn[2].weight, std=proj_std)

    def tokens(self, refs: Tensor) -> Tensor:
        """[B, d] references -> [B, n_tokens, d] keys/values."""
        return self.ref_tokens(refs).view(refs.shape[0], self.n_tokens, refs.shape[1])

    def forward(self, q: Tensor, ref_tokens: Tensor) -> Tensor:
        """Masked-caption tokens q [B, L, d] reconstructed from reference tokens [B, n_r, d]: [B, L, d]."""
        h = self.ln_msa(q)
        x = q + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.ffn1(self.ln_ffn1(x))
        kv = self.ln_kv(ref_tokens)
        x = x + self.cross_attn(self.ln_mca(x), kv, kv, need_weights=False)[0]
        x = x + self.ffn2(self.ln_ffn2(x))
        return self.ln_post(x)


@register_method("mmref")
class MMRef(ClipMLM):
    """MMRef (references + GF + LR + RGRL, top-k refinement in reference space) on IRRA's CLIP dual encoder.

    Args:
        profile: "tiny" (random tiny towers, word vocabulary) or "paper" (CLIP from `clip_path`).
        clip_path: CLIP weights and tokenizer (hub name in the local cache, or a folder).
        refine: re-score each query's coarse top-k in reference space; False = the plain global ranking.
        rerank_k: k of the refinement.
        lam: λ of the re-score S0 + λ⟨r(q), r(g)⟩ (docs/methods.md's `lambda`, a Python keyword).
        ref_space: "softmax" (r = normalise(softmax(cos(x, R)/τ_r))) or "cosine" (centred cosines,
            normalised).
        use_fuse, use_lr, use_rgrl: train with L_Fuse, L_LR, L_RGRL.
        rgrl_kl: add the KL term between matched pairs' reference distributions.
        align_loss: "sdm" (IRRA's) or "infonce" on the globals.
        ref_init: "class_mean" (per-class mean of the initial globals, one pass at fit start) or "normal".
        n_ref_tokens: reference tokens n_r of the LR block's keys/values.
        temperature_learnable: L_align's τ learnt (IRRA's switch: None = learnable in the tiny profile only).
        optim: optimiser; None = the profile's (R is kept out of weight decay either way).
        overrides, **fields: `MMRefConfig` fields replacing the profile's (fgbench.profiles).
    """

    published_as = "MMRef"  # results/published.csv
    provenance = "re-implementation from the paper's description"
    tasks = frozenset({"text-image"})
    presets = PROFILES
    LR_HEAD = ("lr_block", "mlm_head")  # training-only modules

    def __init__(
        self,
        profile: str = "tiny",
        clip_path: str = CLIP_PATH,
        refine: bool = True,
        rerank_k: int = 50,
        lam: float = 0.5,
        ref_space: str = "softmax",
        use_fuse: bool = True,
        use_lr: bool = True,
        use_rgrl: bool = True,
        rgrl_kl: bool = False,
        align_loss: str = "sdm",
        ref_init: str = "class_mean",
        n_ref_tokens: int = 4,
        temperature_learnable: bool | None = None,
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        check_choice("ref_space", ref_space, tuple(REF_SPACES))
        check_choice("align_loss", align_loss, tuple(ALIGN_LOSSES))
        check_choice("ref_init", ref_init, REF_INITS)
        if rerank_k < 1:
            raise ValueError(f"rerank_k={rerank_k}: expected an integer >= 1")
        if n_ref_tokens < 1:
            raise ValueError(f"n_ref_tokens={n_ref_tokens}: expected an integer >= 1")
        # overrides and fields merged inline: save_hyperparameters reads the arguments' local names
        merged, loss_names = merge_overrides(overrides, fields), (ALIGN_LOSSES[align_loss],)
        super().__init__(profile, clip_path, loss_names, temperature_learnable, optim, loss_weights, merged)
        # not saved: IRRA's loss_names (set from align_loss) and the test-time switches, which training never
        # reads, so `test --ckpt_path` takes them from its own config (LightningCLI puts a checkpoint's
        # hyper-parameters over the command line's)
        self.save_hyperparameters(ignore=["loss_names", *TEST_TIME])
        self.optim_cfg = _no_decay_on_refs(self.optim_cfg)
        self.refine, self.lam, self.ref_space = refine, float(lam), ref_space
        self.rerank_k = rerank_k if refine else None
        self.use_fuse, self.use_lr, self.use_rgrl, self.rgrl_kl = use_fuse, use_lr, use_rgrl, rgrl_kl
        self.align_loss, self.ref_init, self.n_ref_tokens = align_loss, ref_init, n_ref_tokens
        self.references: nn.Parameter | None = None
        # True once R holds its initial (class-mean) or trained values: a resumed run never re-initialises R
        self.register_buffer("references_ready", torch.tensor(False))

    # -- building ------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        if self.built:
            return
        super().build(data)  # tokenizer, towers, processor (no ID classifier, no IRR head)
        width = self.width
        m = data.num_classes
        if m < 1:
            raise ValueError(
                f"mmref: {data.name} reports num_classes={m}; MMRef needs "
                "one reference per training identity/class (LoadedData.num_classes)"
            )
        if self.ref_init == "normal":
            init = torch.randn(m, width) * self.hp.ref_init_std
        else:  # class means are set at fit start (`on_fit_start`); zeros until then
            init = torch.zeros(m, width)
        self.references = nn.Parameter(init, requires_grad=self.use_fuse or self.use_lr)
        self.references_ready.fill_(self.ref_init == "normal")
        if self.use_lr:
            self.mask_id, self.special_ids, vocab = self.mask_vocabulary()
            self.lr_block = LocalReconstruction(width, self.n_ref_tokens)
            self.mlm_head = mlm_head(width, vocab)
            init_mlm_head(self.mlm_head, width, depth=1)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not bool(self.references_ready):
            dm = self._datamodule()
            if dm is None:
                raise RuntimeError("mmref: ref_init=class_mean needs the DataModule attached to the trainer")
            self.init_references(dm)

    @torch.no_grad()
    def init_references(self, datamodule: RetrievalDataModule) -> None:
        """R_c = normalise(mean of the normalised image and text globals of class c's training pairs).

        One pass over the training pairs in order (test transform, eval mode, no RNG drawn); under DDP each
        rank encodes every world-th pair and the sums are all-reduced, so every rank holds the same R.
        """
        assert self.references is not None
        train = datamodule.loaded.train
        if train is None:
            raise RuntimeError(f"mmref: {datamodule.name} has no training split to initialise R from")
        ds = train.with_transform(self.processor.image_transform(False))  # a copy: the loaders' keeps its own
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        loader = DataLoader(
            Subset(ds, range(rank, len(ds), world)),  # type: ignore[arg-type]
            batch_size=datamodule.eval_batch_size,
            shuffle=False,
            num_workers=datamodule.num_workers,
            collate_fn=functools.partial(collate_pairs, processor=self.processor),
            generator=torch.Generator().manual_seed(0),
        )
        sums = torch.zeros(self.references.shape, device=self.references.device)
        was_training = self.training
        self.eval()
        amp = trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext()
        with amp:
            for batch in loader:
                batch = move_batch(batch, self.references.device)
                v = F.normalize(self.image_out(batch.visual).glob.float(), dim=-1)
                t = F.normalize(self.text_out(batch.text).glob.float(), dim=-1)
                sums.index_add_(0, batch.label, v + t)
        if trainer is not None:
            sums = trainer.strategy.reduce(sums, reduce_op="sum")
        self.references.copy_(F.normalize(sums, dim=-1))
        self.references_ready.fill_(True)
        self.train(was_training)

    # -- training ------------------------------------------------------------------------------------
    def cross_former(self, text_tokens: Tensor, ref_tokens: Tensor) -> Tensor:
        """MMRef's LR block in the place of IRRA's cross-former: the masked caption attends to the reference
        tokens [B, n_r, d] instead of the image tokens, so `masked_token_loss` computes L_LR."""
        return self.lr_block(text_tokens, ref_tokens)

    def reference_tokens(self, labels: Tensor) -> Tensor:
        """Keys/values of the LR block for captions of identities `labels`: [B, n_r, d]."""
        assert self.references is not None
        return self.lr_block.tokens(self.references[labels])

    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        assert self.references is not None
        image = self.image_out(batch.visual).glob
        text = self.text_out(batch.text).glob
        terms = self.global_terms(text, image, batch.label)  # L_align: `sdm` or `itc`
        e, y = torch.cat([image, text]), torch.cat([batch.label, batch.label])
        if self.use_fuse:
            terms["fuse"] = reference_nce(e.detach(), self.references, y, self.hp.tau_fuse)
        if self.use_lr:
            terms["lr"] = self.masked_token_loss(batch.text, self.reference_tokens(batch.label))
        if self.use_rgrl:
            terms["rgrl"] = reference_nce(e, self.references.detach(), y, self.hp.tau_rgrl)
        if self.rgrl_kl:
            terms["rgrl_kl"] = reference_kl(image, text, self.references.detach(), self.hp.tau_rgrl)
        return terms

    # -- test time: reference space and refinement ---------------------------------------------------
    def reference_vector(self, glob: Tensor) -> Tensor:
        """r(x) [n, m] of global vectors [n, d] in `ref_space`, unit L2 norm, computed in fp32 even under AMP
        (bf16 cosines, 8 mantissa bits, would be magnified by 1/τ_r in the softmax)."""
        assert self.references is not None
        with torch.autocast(glob.device.type, enabled=False):
            refs = F.normalize(self.references.detach().float(), dim=-1).to(glob.device)
            cos = F.normalize(glob.float(), dim=-1) @ refs.T
            return F.normalize(REF_SPACES[self.ref_space](cos, self.hp.tau_ref), dim=-1)

    def _with_ref(self, f: Features) -> Features:
        if self.rerank_k is not None:  # refine off: no reference vectors to store
            assert f.glob is not None
            f.aux["ref"] = self.reference_vector(f.glob).to(torch.bfloat16)
        return f

    def encode_queries(self, batch: TextBatch | ComposedQueryBatch) -> Features:
        return self._with_ref(super().encode_queries(batch))

    def encode_gallery(self, batch: VisualBatch) -> Features:
        return self._with_ref(super().encode_gallery(batch))

    def pool_queries(self, q: Features, groups: Tensor) -> tuple[Features, Tensor]:
        """Class-mean queries with r recomputed from the pooled text vector (not the mean of the r's)."""
        pooled, labels = super().pool_queries(q, groups)
        return self._with_ref(pooled), labels

    def rescore_pairs(self, q: Features, g: Features) -> Tensor:
        """Refined score S0 + λ⟨r(q), r(g)⟩ of aligned pairs (the evaluator's re-rank of the top-k)."""
        s0 = self.score_pairs(q, g)
        if "ref" not in q.aux or "ref" not in g.aux:
            raise ValueError("mmref: re-scoring needs aux['ref'] on both sides (encoded with refine=True)")
        return s0 + self.lam * (q.aux["ref"].float() * g.aux["ref"].float()).sum(-1)
