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
- composition: q = normalise(TIRG(v_r, t)), with `fgbench.encoders.composers.GatedResidualComposer`
  (docs/methods.md §9).
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

The package, by responsibility: `config` (profiles, switches, transform presets), `scorer` (the enhanced
score terms and their chunk loops), `encoders` (the CNN + BiGRU encoders with GloVe, and the CLIP-feature
variant's), `model` (the LightningModule: features, the score layer, the losses, evaluation).
"""

from .config import CLIP_VARIANT, PROFILES, PROVENANCE, NSFSEConfig
from .encoders import load_glove
from .model import NSFSE
from .scorer import CandidateSets, QuerySets, enhanced_terms

__all__ = [
    "CLIP_VARIANT",
    "NSFSE",
    "PROFILES",
    "PROVENANCE",
    "CandidateSets",
    "NSFSEConfig",
    "QuerySets",
    "enhanced_terms",
    "load_glove",
]
