"""Cross-check with torchmetrics where it computes the same quantity (docs/protocols.md §6.2).

RetrievalHitRate@K is our R@K; RetrievalMAP is our mAP once scores are shifted positive (torchmetrics >= 1.8
treats items scored <= 0 as non-relevant). Continuous random scores: no ties, so tie rules agree.
"""

from __future__ import annotations

import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from fgbench.evaluation import EvalSpec, evaluate


@pytest.mark.parametrize("seed", range(3))
def test_hit_rate_and_map_match_torchmetrics(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, n = 40, 60
    gl = torch.randint(0, 12, (n,), generator=g)
    ql = gl[torch.randint(0, n, (q,), generator=g)]
    S = torch.randn(q, n, generator=g)
    ours = evaluate(S, EvalSpec("person_t2i", ql, gl)).metrics
    target = ql[:, None] == gl[None, :]
    indexes = torch.arange(q)[:, None].expand(q, n)
    preds = S - S.min() + 1.0
    for k in (1, 5, 10):
        tm = RetrievalHitRate(top_k=k)(preds.flatten(), target.flatten(), indexes=indexes.flatten())
        assert ours[f"R{k}"] == pytest.approx(100 * float(tm), abs=1e-4)
    tm_map = RetrievalMAP()(preds.flatten(), target.flatten(), indexes=indexes.flatten())
    assert ours["mAP"] == pytest.approx(100 * float(tm_map), abs=1e-4)
