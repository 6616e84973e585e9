"""RACG (Peng et al., IEEE TNNLS 35(2):2194-2207, 2024), docs/methods.md §3: word and region graphs matched by
a cross-graph relation encoder and a multi-head node similarity.

**A re-implementation from the paper's description.** RACG's code, equations and hyper-parameters are not
public, so this package builds our reading of the abstract (and that of its SIGIR 2021 precursor CGAM) on
TERAN's inputs and text encoder (the same `fgbench.encoders` pieces: `token_text`, `word_windows`,
`regions.region_inputs`), so that the two compare with everything else held equal.
No published numbers are available to compare with: its leaderboard cells stay empty, next to `teran`,
`vsepp` and the literature anchors. Nothing here claims to reproduce the paper.

What comes from where (docs/methods.md marks):
- [text] a semantic-embedded graph per modality over fine-grained objects and their relations; a cross-graph
  relation encoder that models inter-modal relations and "mutually boosts" correlations; feature
  reconstruction from shared semantic concepts and the original embeddings; a multi-head similarity for
  node-level correspondence.
- [inf] (docs/methods.md §3) everything else, namely:
  - nodes: regions V0 = Linear(region) + Linear([x1, y1, x2, y2, area]), words T0 = Linear(text tokens), at
    D (1024; 64 tiny);
  - intra-graph relation aggregation, `graph_layers` residual layers per modality: E = masked
    softmax_j(φ(x_i)·ψ(x_j)/√D); the image graph adds the spatial edges E_sp = row-normalised box IoU,
    Â = (E + E_sp)/2, the text graph Â = E; X <- LN(X + ReLU(Â X W)); nodes and the globals v̄, t̄ (masked
    means) L2-normalised;
  - cross-graph relation encoder, per pair and head h (H = 8 of 128; 4 of 16 tiny), λ = 9: the visual
    context of a word a_w = Σ_r softmax_r(λ t̂ʰ_w·v̂ʰ_r) vʰ_r, the textual context of a region
    c_r = Σ_w softmax_w(λ v̂ʰ_r·t̂ʰ_w) tʰ_w, spread along each modality's own last Â with β = 0.5:
    a'_w = (1-β) a_w + β Σ_w' Â^T_ww' a_w', c'_r likewise over Â^V;
  - S(i, j) = (1/2H) Σ_h [mean_w cos(tʰ_w, a'ʰ_w) + mean_r cos(vʰ_r, c'ʰ_r)];
  - L = L_hinge(S) + λ_rec L_rec (+ L_hinge(v̄·t̄) with `global_aux`); L_hinge is TERAN's (α = 0.2, hardest
    negatives, summed); L_rec over the positive pairs only: mean_w (1 - cos(W_t a_w, sg(t_w))) +
    mean_r (1 - cos(W_v c_r, sg(v_r))), a_w and c_r the contexts before the spreading (heads concatenated),
    λ_rec = 0.1;
  - recipe: Adam, lr 2e-4 (BERT 2e-5), x0.1 at epoch 15, 30 epochs, batch 64, gradient clipping 2.0;
  - test time: pairwise and exact by default; with P = the per-head dot products and π' the spread attention
    weights, tʰ_w·a'_w = Σ_r π'_wr P_wr and ‖a'_w‖² = π'_wᵀ (Vʰ Vʰᵀ) π'_w (likewise c'_r with Tʰ Tʰᵀ), so
    no per-pair context is materialised; `rerank_k` shortlists by v̄·t̄ (trained only with `global_aux`).
- our reading, below the level of docs/methods.md:
  - the text graph's nodes are the scored words of TERAN's window (`word_span`, default `drop_period`), not
    [CLS]/[SEP];
  - Â gives masked nodes zero weight (columns) and masked rows are zero; E_sp's diagonal is 1 for every valid
    node (IoU with itself, also for degenerate boxes); on the tiny grid cells, which only touch, IoU is 0
    between distinct cells, so E_sp reduces to self-loops there;
  - with `intra_graph=false` the nodes are not updated, but one edge module still builds Â from the input
    nodes for the spreading (the ablation removes the node update, not the edges);
  - `cross_graph=false` scores and trains v̄·t̄ alone (there are no contexts, so no L_rec: λ_rec is 0 then,
    recorded); data without boxes (`precomp`) drops the box term and the spatial edges, recorded;
  - token sets and Â are stored in bf16 (`store_dtype`) and scored in fp32 in chunks of at most
    `score_chunk` elements per [b_q, b_g, H, W, R] tensor; Â travels in `Features.aux["adj"]` (absent when
    β = 0 or cross-graph is off); blocks are scored by `relation_matrix`, aligned pairs (re-ranking) by
    `relation_block`: the same function, checked against materialised contexts in the tests;
  - the tiny profile: TERAN's tiny inputs (TinyText words; TinyCNN grid cells, or RoI averages over the
    boxes served with the images), D = 64, H = 4, AdamW 1e-3 with a cosine schedule, and TERAN's first
    epoch of the hinge summed over all negatives (`sum_warmup_epochs`; every epoch on person data, as teran);
  - class-level protocols (class_reed: CUB, Flowers) average caption embeddings, which a pairwise scorer
    does not define: an error.
"""

from .config import ABLATIONS, PROFILES, PROVENANCE, RACGConfig
from .graph import GraphLayer, Nodes, RelationGraph, spatial_edges
from .module import RACG
from .scorer import (
    SIDES,
    bucketed_relation_scores,
    contexts,
    relation_block,
    relation_matrix,
    relation_scores,
)

__all__ = [
    "ABLATIONS",
    "PROFILES",
    "PROVENANCE",
    "RACG",
    "SIDES",
    "GraphLayer",
    "Nodes",
    "RACGConfig",
    "RelationGraph",
    "bucketed_relation_scores",
    "contexts",
    "relation_block",
    "relation_matrix",
    "relation_scores",
    "spatial_edges",
]
