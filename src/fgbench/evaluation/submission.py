"""CIRR test-server submission files (docs/protocols.md §4.2): top-50 and subset top-3 names per pair id."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from fgbench.io import atomic_write_text

MAX_BYTES = 5 * 1024 * 1024


def write_cirr_submission(
    topk: Tensor,
    sub_order: Tensor,
    query_ids: list[str],
    gallery_names: list[str],
    out_dir: str | Path,
    tag: str = "fgbench",
) -> tuple[Path, Path]:
    """Write `recall_submission_<tag>.json` and `recall_subset_submission_<tag>.json`; names best first."""
    if topk.shape[0] != len(query_ids) or sub_order.shape[0] != len(query_ids):
        raise ValueError(f"{len(query_ids)} pair ids but ranking lists for {topk.shape[0]} queries")
    recall: dict[str, object] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, object] = {"version": "rc2", "metric": "recall_subset"}
    for qid, top, sub in zip(query_ids, topk.tolist(), sub_order.tolist(), strict=True):
        names = [gallery_names[g] for g in top[:50]]
        sub_names = [gallery_names[g] for g in sub if g >= 0][:3]
        if len(set(names)) != len(names) or len(set(sub_names)) != len(sub_names):
            raise ValueError(f"pair {qid}: duplicate names in a ranking list")
        recall[str(qid)] = names
        subset[str(qid)] = sub_names
    out = Path(out_dir)
    paths = []
    for kind, obj in (("recall", recall), ("recall_subset", subset)):
        text = json.dumps(obj)
        if len(text.encode()) > MAX_BYTES:
            raise ValueError(f"{kind} submission is {len(text) / 1e6:.1f} MB, over the server's 5 MB limit")
        paths.append(atomic_write_text(out / f"{kind}_submission_{tag}.json", text))
    return paths[0], paths[1]
