"""RACG's profiles, option checks and ablation switches (docs/methods.md §3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fgbench.encoders import ImageTowerConfig
from fgbench.encoders.token_text import TOKEN_TEXT_ENCODERS, TokenTextSizes
from fgbench.encoders.word_windows import WORD_SPANS
from fgbench.optim import OptimConfig

PROVENANCE = "re-implementation from the paper's description"

# -- configuration -----------------------------------------------------------------------------------------


@dataclass
class RACGConfig(TokenTextSizes):
    """Sizes and recipe of one RACG profile (the ablation switches of docs/methods.md §3 are `RACG`
    arguments); its first fields, the text encoder's (TERAN's, at the same sizes), are `TokenTextSizes`'s."""

    # pixels -> regions (grid cells, or RoI averages over the data's boxes); its size and (none) transforms
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    roi_boxes: bool = True  # tiny_cnn: RoI-average its map over the boxes served with the images
    max_regions: int = 36  # region sets from data or boxes are padded to this many slots at test time
    embed_dim: int = 64  # D: node width (paper reading: 1024)
    heads: int = 4  # H of the cross-graph encoder and multi-head similarity (paper reading: 8 of 128)
    graph_layers: int = 2  # intra-graph relation layers per modality
    attn_lambda: float = 9.0  # λ: inverse temperature of the word-region attention
    margin: float = 0.2  # α of the hinge
    sum_warmup_epochs: int | None = None  # summed-hinge (VSE0) epochs first; None: per task family (vsepp)
    store_dtype: str = "bfloat16"  # dtype of the node sets and Â kept for scoring (computed in fp32)
    score_chunk: int = 1 << 22  # max elements of one [b_q, b_g, H, W, R] tensor while scoring
    score_buckets: bool = True  # evaluation scores real nodes only, sets grouped by length (exact)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(step_epochs=15))  # lr of the new modules
    text_lr_mult: float = 1.0  # lr multiplier of the pretrained text encoder (paper reading: 0.1 -> 2e-5)
    grad_clip: float = 2.0  # gradient-norm clipping (0: off)


PROFILES: dict[str, RACGConfig] = {
    "tiny": RACGConfig(),
    "paper": RACGConfig(
        text_encoder="bert",
        max_len=88,
        embed_dim=1024,
        heads=8,
        sum_warmup_epochs=0,
        score_chunk=1 << 26,
        optim=OptimConfig(name="adam", lr=2e-4, weight_decay=0.0, schedule="step", step_epochs=15),
        text_lr_mult=0.1,
    ),
}


def check_options(
    hp: RACGConfig,
    beta: float,
    lambda_rec: float,
    word_span: str,
    cross_graph: bool,
    global_aux: bool,
    rerank_k: int | None,
    loss_weights: dict[str, float] | None,
) -> None:
    """Errors naming the argument and what was expected."""
    allowed = [
        (word_span, WORD_SPANS, "word_span"),
        (hp.text_encoder, TOKEN_TEXT_ENCODERS, "text_encoder"),
    ]
    for value, names, what in allowed:
        if value not in names:
            raise ValueError(f"racg: {what} {value!r} is not one of {', '.join(names)}")
    rules = [
        (hp.heads >= 1 and hp.embed_dim % hp.heads == 0, f"heads={hp.heads} must divide embed_dim"),
        (0.0 <= beta <= 1.0, f"beta={beta} must lie in [0, 1]"),
        (lambda_rec >= 0.0, f"lambda_rec={lambda_rec} must be >= 0"),
        (0.0 < hp.attn_lambda <= 40.0, f"attn_lambda={hp.attn_lambda} must lie in (0, 40] (exp without max)"),
        (hp.graph_layers >= 1, f"graph_layers={hp.graph_layers} must be >= 1 (intra_graph=false drops them)"),
        (cross_graph or not global_aux, "global_aux trains v̄·t̄, which cross_graph=false already scores"),
        (cross_graph or rerank_k is None, "rerank_k re-scores by the cross-graph encoder, which is off"),
        (global_aux or rerank_k is None, "rerank_k shortlists by v̄·t̄, which only global_aux=true trains"),
        (rerank_k is None or rerank_k >= 1, f"rerank_k={rerank_k} must be >= 1"),
        ("rec" not in (loss_weights or {}), "loss_weights['rec'] is lambda_rec; set lambda_rec instead"),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"racg: {why}")


# the ablation switches of docs/methods.md §3, as `RACG` keyword arguments (used by the tests and docs)
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_intra_graph": {"intra_graph": False},
    "no_spatial_edges": {"spatial_edges": False},
    "beta0": {"beta": 0.0},
    "cross_graph_off": {"cross_graph": False},
    "heads1": {"heads": 1},
    "rec0": {"lambda_rec": 0.0},
    "rec1": {"lambda_rec": 1.0},
    "global_aux": {"global_aux": True},
}
