"""Per-query outcomes of every protocol, built from the engine's per-query statistics (`Ranked.stats`).

Each protocol ends with one call here: it names the directions, maps the statistics' rows to the spec's
stable ids (`EvalSpec.query_ids` for rows, `gallery_names` for columns that are queries of the reverse
direction) and adds, for every direction with targets, `n_pos` (relevant items among the candidates) and
`n_cand` (candidates of the query: its gallery less an excluded item), so a chance level can be computed
per query. The layout per protocol is in docs/protocols.md, "Per-query outcomes".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from fgbench.evaluation.outcomes import DirectionOutcomes, QueryOutcomes
from fgbench.evaluation.spec import EvalSpec


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def stable_ids(given: Sequence[str] | None, n: int, what: str) -> tuple[np.ndarray, bool]:
    """The ids of `n` rows (or columns): the spec's, checked, else their positions as strings.

    Returns (ids, whether they came from the dataset)."""
    if given is None:
        return np.array([str(i) for i in range(n)], dtype=str), False
    if len(given) != n:
        raise ValueError(f"{what}: {len(given)} ids for {n} score {what.split()[-1]}")
    ids = np.asarray(list(given), dtype=str)
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != n:
        dup = uniq[counts > 1][:3].tolist()
        raise ValueError(
            f"{what}: {int((counts > 1).sum())} ids repeat (e.g. {dup}); each query needs its own"
        )
    return ids, True


def row_ids(spec: EvalSpec, n: int) -> tuple[np.ndarray, bool]:
    return stable_ids(spec.query_ids, n, f"{spec.protocol}: query ids of the rows")


def col_ids(spec: EvalSpec, n: int) -> tuple[np.ndarray, bool]:
    return stable_ids(spec.gallery_names, n, f"{spec.protocol}: gallery names of the columns")


def n_candidates(n_gallery: int, exclude: Tensor | None, n: int) -> np.ndarray:
    """Candidates per query: the gallery, less the query's excluded item (if any)."""
    out = np.full(n, n_gallery, dtype=np.int64)
    if exclude is not None:
        out -= (_np(exclude) >= 0).astype(np.int64)
    return out


def direction(
    st: dict[str, Tensor],
    ids: np.ndarray,
    n_cand: np.ndarray,
    keep: Sequence[str] = (),
    unit: np.ndarray | None = None,
    **extra: np.ndarray,
) -> DirectionOutcomes:
    """One direction with targets: `first`, the `keep` statistics, `n_pos`, `n_cand` and `extra` arrays."""
    stats: dict[str, np.ndarray] = {k: _np(st[k]) for k in keep}
    stats.update(extra)
    stats["n_pos"] = _np(st["n_pos"]).astype(np.int64)
    stats["n_cand"] = np.asarray(n_cand, dtype=np.int64)
    return DirectionOutcomes(ids, _np(st["first"]).astype(np.int64), stats, unit)


def _outcomes(
    spec: EvalSpec, directions: dict[str, DirectionOutcomes], from_dataset: bool, **info: Any
) -> QueryOutcomes:
    header = {
        "dataset": spec.info.get("dataset", ""),
        "ids": "dataset" if from_dataset else "position",
        "n_gallery": spec.n_gallery,
        "n_query": {name: len(d.ids) for name, d in directions.items()},
        **info,
    }
    return QueryOutcomes(spec.protocol, str(spec.info.get("split", "")), directions, header)


# -- one builder per protocol family --------------------------------------------------------------------


def person(spec: EvalSpec, st: dict[str, Tensor]) -> QueryOutcomes:
    """person_t2i: one direction "t2i"; `ap` and `inp` = n_pos / (last + 1) (mAP, mINP)."""
    ids, real = row_ids(spec, len(st["first"]))
    inp = _np(st["n_pos"]).astype(np.float64) / (_np(st["last"]).astype(np.float64) + 1.0)
    n_cand = n_candidates(spec.n_gallery, spec.exclude, len(ids))
    return _outcomes(spec, {"t2i": direction(st, ids, n_cand, ("ap",), inp=inp)}, real)


def class_reed(spec: EvalSpec, t2i: dict[str, Tensor], i2t: dict[str, Tensor]) -> QueryOutcomes:
    """class_reed: "t2i" = class queries (AP@50 from `below50`), "i2t" = image queries (Top-1)."""
    cls, real_c = row_ids(spec, len(t2i["first"]))
    img, real_i = col_ids(spec, len(i2t["first"]))
    dirs = {
        "t2i": direction(t2i, cls, n_candidates(spec.n_gallery, None, len(cls)), ("below50", "ap")),
        "i2t": direction(i2t, img, n_candidates(len(cls), None, len(img))),
    }
    return _outcomes(spec, dirs, real_c and real_i)


def itm(
    spec: EvalSpec, folds: Sequence[tuple[Tensor, Tensor, dict[str, Tensor], dict[str, Tensor]]]
) -> QueryOutcomes:
    """Image-text: "i2t" (queries = images) and "t2i" (queries = captions), `unit` = the image id in both,
    `fold` = the fold of each query (0 without folds). `folds` = (image rows, caption columns, i2t stats,
    t2i stats) of each fold."""
    assert spec.query_labels is not None
    img_ids, real_i = row_ids(spec, spec.n_query)
    cap_ids, real_c = col_ids(spec, spec.n_gallery)
    row_of = {int(lab): r for r, lab in enumerate(_np(spec.query_labels).tolist())}
    cap_unit = img_ids[
        np.array([row_of[int(lab)] for lab in _np(spec.gallery_labels).tolist()], dtype=np.int64)
    ]
    parts: dict[str, list[DirectionOutcomes]] = {"i2t": [], "t2i": []}
    for f, (rows, cols, i2t, t2i) in enumerate(folds):
        r, c = _np(rows).astype(np.int64), _np(cols).astype(np.int64)
        for name, st, ids, unit, n_cand in (
            ("i2t", i2t, img_ids[r], img_ids[r], len(c)),
            ("t2i", t2i, cap_ids[c], cap_unit[c], len(r)),
        ):
            n = len(ids)
            fold = np.full(n, f, dtype=np.int64)
            parts[name].append(direction(st, ids, np.full(n, n_cand), unit=unit, fold=fold))
    dirs = {name: _concat(ds) for name, ds in parts.items()}
    return _outcomes(spec, dirs, real_i and real_c, folds=len(folds))


def _concat(parts: list[DirectionOutcomes]) -> DirectionOutcomes:
    if len(parts) == 1:
        return parts[0]
    unit = None if parts[0].unit is None else np.concatenate([p.unit for p in parts])  # type: ignore[misc]
    return DirectionOutcomes(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.first for p in parts]),
        {k: np.concatenate([p.stats[k] for p in parts]) for k in parts[0].stats},
        unit,
    )


def fiq(
    spec: EvalSpec, groups: Sequence[tuple[str, Tensor, int, Tensor | None, dict[str, Tensor]]]
) -> QueryOutcomes:
    """FashionIQ: one direction per category (its name; "fiq" without groups). `groups` = (name, query
    indices, gallery size, local exclusions, stats) of each."""
    ids, real = row_ids(spec, spec.n_query)
    dirs = {}
    for name, qi, n_gallery, exclude, st in groups:
        q = _np(qi).astype(np.int64)
        dirs[name or "fiq"] = direction(st, ids[q], n_candidates(n_gallery, exclude, len(q)))
    return _outcomes(spec, dirs, real, categories=[n for n, *_ in groups if n])


def cirr(spec: EvalSpec, st: dict[str, Tensor]) -> QueryOutcomes:
    """cirr: one direction "cirr"; `sub_rank` (Recall_subset) and `n_sub`, the subset members less the
    reference (its candidates)."""
    ids, real = row_ids(spec, len(st["first"]))
    n_sub = np.zeros(len(ids), dtype=np.int64)
    if spec.subsets is not None:
        sub = _np(spec.subsets)
        ex = _np(spec.exclude)[:, None] if spec.exclude is not None else np.full((len(ids), 1), -1)
        n_sub = ((sub >= 0) & (sub != ex)).sum(1).astype(np.int64)
    n_cand = n_candidates(spec.n_gallery, spec.exclude, len(ids))
    return _outcomes(spec, {"cirr": direction(st, ids, n_cand, ("sub_rank",), n_sub=n_sub)}, real)


def f200k(spec: EvalSpec, st: dict[str, Tensor]) -> QueryOutcomes:
    """f200k: one direction "f200k" (a hit = any image with the target caption)."""
    ids, real = row_ids(spec, len(st["first"]))
    n_cand = n_candidates(spec.n_gallery, spec.exclude, len(ids))
    return _outcomes(spec, {"f200k": direction(st, ids, n_cand)}, real)


def pooled_ids(spec: EvalSpec, labels: Tensor) -> list[str]:
    """Ids of pooled class queries (one row per label): the class names, else the labels themselves."""
    names = spec.label_names or {}
    return [names.get(int(lab), f"label{int(lab)}") for lab in _np(labels).tolist()]
