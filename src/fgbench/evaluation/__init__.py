"""The one evaluator: every protocol of docs/protocols.md over a score matrix or a blockwise score function.

>>> from fgbench.evaluation import EvalSpec, evaluate
>>> result = evaluate(scores, EvalSpec("person_t2i", query_labels, gallery_labels))
>>> result.metrics["R1"]
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fgbench.evaluation.engine import Options, Progress
from fgbench.evaluation.protocols import (
    PROTOCOLS,
    EvalResult,
    Protocol,
    get_protocol,
    list_protocols,
    register_protocol,
)
from fgbench.evaluation.source import FunctionSource, MatrixSource, ScoreSource, as_source
from fgbench.evaluation.spec import EvalSpec

__all__ = [
    "EvalResult",
    "EvalSpec",
    "FunctionSource",
    "MatrixSource",
    "Options",
    "PROTOCOLS",
    "Protocol",
    "get_protocol",
    "ScoreSource",
    "evaluate",
    "list_protocols",
    "register_protocol",
]


def evaluate(
    scores: Tensor | ScoreSource,
    spec: EvalSpec,
    *,
    rerank_k: int | None = None,
    block_rows: int = 256,
    max_elems: int = 1 << 25,
    distributed: bool | None = None,
    keep_lists: bool = False,
    progress: Progress | None = None,
    one_walk: bool = True,
) -> EvalResult:
    """Score `spec.protocol` on `scores` [queries, gallery] (a matrix or a `ScoreSource`).

    `rerank_k` re-scores each query's coarse top-k with the source's pair scorer (docs/methods.md,
    re-ranking); the other options only change speed and memory, never a metric (`one_walk=False`: the
    image-text protocols walk the pairs once per direction, as before the one-walk path).
    """
    protocol = get_protocol(spec.protocol)
    if rerank_k is not None and rerank_k < 1:
        raise ValueError(f"rerank_k must be >= 1, got {rerank_k}")
    source = as_source(scores)
    opts = Options(
        block_rows=block_rows,
        max_elems=max_elems,
        rerank_k=rerank_k,
        distributed=distributed,
        progress=progress,
        keep_lists=keep_lists,
        one_walk=one_walk,
    )
    result = protocol.fn(source, spec, opts)
    details: dict[str, Any] = {
        "protocol": spec.protocol,
        "n_query": source.n_rows,
        "n_gallery": source.n_cols,
        "n_excluded": 0 if spec.exclude is None else int((spec.exclude >= 0).sum()),
        "rerank_k": rerank_k,
        **spec.info,
        **result.details,
    }
    result.details = details
    return result
