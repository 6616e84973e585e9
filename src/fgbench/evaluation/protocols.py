"""Every protocol of docs/protocols.md, registered under its id; metrics in percent, unrounded.

A protocol turns per-query statistics of one or two retrieval directions (`engine.direction_stats`) into
the published metrics. Metric keys follow docs/protocols.md §7.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgbench.evaluation import outcomes as values
from fgbench.evaluation import per_query
from fgbench.evaluation.engine import Direction, Options, Ranked, direction_stats
from fgbench.evaluation.onewalk import itm_stats
from fgbench.evaluation.outcomes import MetricFn, QueryOutcomes
from fgbench.evaluation.source import ScoreSource
from fgbench.evaluation.spec import EvalSpec
from fgbench.evaluation.submission import write_cirr_submission


@dataclass
class EvalResult:
    """Metrics (percent, unrounded), JSON-able details, per-query arrays (submission lists), and the
    per-query outcomes the metrics are made of (None where there are no targets)."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Tensor] = field(default_factory=dict)
    outcomes: QueryOutcomes | None = None


ProtocolFn = Callable[[ScoreSource, EvalSpec, Options], EvalResult]
SubmissionFn = Callable[[EvalResult, EvalSpec, Path], "list[Path] | None"]


@dataclass(frozen=True)
class Protocol:
    """Everything the suite knows about one protocol, registered once beside its metric function: the method
    base, the CLIs, the leaderboard and the benchmarks read it (no protocol name lists elsewhere)."""

    name: str
    fn: ProtocolFn
    headline: tuple[str, ...]  # the metrics its published tables report; the first is the charted one
    rows_are_images: bool = False  # image-text: the score matrix is images x captions (methods score c x i)
    pooled_queries: bool = False  # queries are class means of the caption features (class_reed)
    submission: SubmissionFn | None = None  # a test server's submission files from a result (CIRR)
    metric_values: MetricFn | None = None  # per-unit values whose mean is a metric (outcomes.metric_values)


PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(
    *names: str,
    headline: tuple[str, ...],
    rows_are_images: bool = False,
    pooled_queries: bool = False,
    submission: SubmissionFn | None = None,
    metric_values: MetricFn | None = None,
) -> Callable[[ProtocolFn], ProtocolFn]:
    def deco(fn: ProtocolFn) -> ProtocolFn:
        for n in names:
            flags = (rows_are_images, pooled_queries, submission, metric_values)
            PROTOCOLS[n] = Protocol(n, fn, headline, *flags)
        return fn

    return deco


def get_protocol(name: str) -> Protocol:
    """The registered protocol `name`; a KeyError naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(list_protocols())}")
    return PROTOCOLS[name]


def list_protocols() -> list[str]:
    return sorted(PROTOCOLS)


def _cirr_submission(result: EvalResult, spec: EvalSpec, out: Path) -> list[Path] | None:
    """CIRR's test-server JSON files, when the result kept the ranked lists and the split names its pairs."""
    if "topk" not in result.arrays or not spec.query_ids or not spec.gallery_names:
        return None
    arrays = result.arrays
    return write_cirr_submission(arrays["topk"], arrays["sub_order"], spec.query_ids, spec.gallery_names, out)


# the metrics published tables report (docs/protocols.md §5); the first is the leaderboards' charted metric
ITM_HEADLINE = ("rsum", "i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10")
FIQ_HEADLINE = ("avg", "avg_R10", "avg_R50") + tuple(
    f"{c}_{k}" for c in ("dress", "shirt", "toptee") for k in ("R10", "R50")
)


def _need_labels(spec: EvalSpec) -> Tensor:
    if spec.query_labels is None:
        raise ValueError(f"protocol {spec.protocol!r} needs query labels (targets) to compute metrics")
    return spec.query_labels


def _rank(source: ScoreSource, opts: Options, **kw: Any) -> Ranked:
    return Ranked(direction_stats(Direction(source=source, **kw), opts))


def _rank_queries(source: ScoreSource, spec: EvalSpec, opts: Options, name: str) -> Ranked:
    """The queries (rows) ranked against the gallery with the spec's labels and exclusions."""
    row_labels, col_labels = _need_labels(spec), spec.gallery_labels
    return _rank(source, opts, row_labels=row_labels, col_labels=col_labels, exclude=spec.exclude, name=name)


def _recalls(r: Ranked, ks: tuple[int, ...], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}R{k}": r.recall(k) for k in ks}


# -- person retrieval ---------------------------------------------------------------------------------


@register_protocol(
    "person_t2i", headline=("R1", "R5", "R10", "mAP", "mINP"), metric_values=values.person_values
)
def person_t2i(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """IRRA semantics: R@1/5/10 hit rates, mAP over the whole gallery, mINP (hardest positive)."""
    r = _rank_queries(source, spec, opts, "t2i")
    st = r.stats
    metrics = _recalls(r, (1, 5, 10))
    metrics["mAP"] = 100.0 * float(st["ap"].mean())
    metrics["mINP"] = 100.0 * float((st["n_pos"].double() / (st["last"].double() + 1.0)).mean())
    return EvalResult(metrics, {"n_tied": r.n_tied}, outcomes=per_query.person(spec, st))


# -- class-level retrieval (Reed et al.) --------------------------------------------------------------


@register_protocol(
    "class_reed", headline=("AP50", "top1"), pooled_queries=True, metric_values=values.class_reed_values
)
def class_reed(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """Rows are class queries (class-mean caption embeddings), columns test images.

    AP@50 = precision@50 averaged over classes; Top-1 = zero-shot classification of each image over the
    class queries (ties go to the lower row, i.e. the lower class index when rows are sorted by class).
    """
    ql = _need_labels(spec)
    if torch.unique(ql).numel() != ql.numel():
        raise ValueError(
            "class_reed expects one query row per class (pool the caption queries of each class first); "
            f"got {ql.numel()} rows for {torch.unique(ql).numel()} classes"
        )
    t2i = _rank(source, opts, row_labels=ql, col_labels=spec.gallery_labels, count_below=(50,), name="t2i")
    i2t = _rank(source.T, opts, row_labels=spec.gallery_labels, col_labels=ql, name="i2t")
    metrics = {
        "AP50": 100.0 * float((t2i.stats["below50"].double() / 50.0).mean()),
        "top1": i2t.recall(1),
    }
    outcomes = per_query.class_reed(spec, t2i.stats, i2t.stats)
    return EvalResult(metrics, {"n_tied": t2i.n_tied, "i2t_n_tied": i2t.n_tied}, outcomes=outcomes)


# -- image-text matching ------------------------------------------------------------------------------


def _itm_fold(
    source: ScoreSource, img_labels: Tensor, cap_labels: Tensor, opts: Options
) -> tuple[dict, dict]:
    """One fold: rows = images, columns = captions. i2t rank = best of the image's captions.

    `opts.one_walk` scores the pairs once for both directions; otherwise t2i walks the transposed source."""
    if opts.one_walk:
        i2t, t2i = (Ranked(st) for st in itm_stats(source, img_labels, cap_labels, opts))
    else:
        i2t = _rank(source, opts, row_labels=img_labels, col_labels=cap_labels, name="i2t")
        t2i = _rank(source.T, opts, row_labels=cap_labels, col_labels=img_labels, name="t2i")
    m: dict[str, float] = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        m.update(_recalls(r, (1, 5, 10), f"{name}_"))
    m["rsum"] = sum(m[f"{d}_R{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        ranks = r.stats["first"].numpy().astype(np.float64)
        m[f"{name}_medr"] = math.floor(float(np.median(ranks))) + 1.0
        m[f"{name}_meanr"] = float(ranks.mean()) + 1.0
    return m, {"i2t_n_tied": i2t.n_tied, "t2i_n_tied": t2i.n_tied, "stats": (i2t.stats, t2i.stats)}


def _itm_labels(spec: EvalSpec) -> tuple[Tensor, Tensor]:
    img = _need_labels(spec)
    if torch.unique(img).numel() != img.numel():
        raise ValueError(f"{spec.protocol}: rows must be distinct images (their labels repeat)")
    return img, spec.gallery_labels


@register_protocol(
    "f30k_1k", "coco_5k", headline=ITM_HEADLINE, rows_are_images=True, metric_values=values.itm_values
)
def itm_single(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """Flickr30K 1K / COCO 5K: the whole test split, no folds. Rows images, columns captions."""
    img, cap = _itm_labels(spec)
    m, d = _itm_fold(source, img, cap, opts)
    everything = (torch.arange(img.numel()), torch.arange(cap.numel()), *d.pop("stats"))
    return EvalResult(m, d, outcomes=per_query.itm(spec, [everything]))


@register_protocol(
    "coco_1k_5fold", headline=ITM_HEADLINE, rows_are_images=True, metric_values=values.itm_values
)
def coco_1k_5fold(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """Five sequential folds of the image rows (file order) with their captions; every metric is the
    mean over folds, rsum the mean of the per-fold rsums (docs/protocols.md §3, §6.1)."""
    img, cap = _itm_labels(spec)
    n = img.numel()
    if n % 5:
        raise ValueError(f"coco_1k_5fold needs a number of images divisible by 5 (the 5K test), got {n}")
    size = n // 5
    folds: list[dict[str, float]] = []
    details: dict[str, Any] = {"fold_size": size}
    fold_stats = []
    for f in range(5):
        rows = torch.arange(f * size, (f + 1) * size)
        cols = torch.nonzero(torch.isin(cap, img[rows])).squeeze(1)
        m, d = _itm_fold(source.select(rows, cols), img[rows], cap[cols], opts)
        folds.append(m)
        fold_stats.append((rows, cols, *d.pop("stats")))
        for key, v in d.items():
            details[key] = int(details.get(key, 0)) + int(v)
    metrics = {k: float(np.mean([fm[k] for fm in folds])) for k in folds[0]}
    details["folds"] = folds
    return EvalResult(metrics, details, outcomes=per_query.itm(spec, fold_stats))


# -- composed retrieval -------------------------------------------------------------------------------


def _group_views(source: ScoreSource, spec: EvalSpec) -> list[tuple[str, ScoreSource, EvalSpec]]:
    """Score each group (FashionIQ category) against its own gallery; remap exclusions to local indices."""
    if not spec.groups:
        return [("", source, spec)]
    out = []
    for name, (qi, gi) in spec.groups.items():
        qi, gi = qi.long().cpu(), gi.long().cpu()
        inv = torch.full((spec.n_gallery,), -1, dtype=torch.long)
        inv[gi] = torch.arange(gi.numel())
        exclude = None
        if spec.exclude is not None:
            ex = spec.exclude.cpu()[qi]
            exclude = torch.where(ex >= 0, inv[ex.clamp(min=0)], ex)
            if bool(((ex >= 0) & (exclude < 0)).any()):
                raise ValueError(f"group {name!r}: an excluded item is not in the group's gallery")
        sub = EvalSpec(
            protocol=spec.protocol,
            query_labels=None if spec.query_labels is None else spec.query_labels.cpu()[qi],
            gallery_labels=spec.gallery_labels.cpu()[gi],
            exclude=exclude,
        )
        out.append((name, source.select(qi, gi), sub))
    return out


def _fiq(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"n_tied": 0}
    parts = []
    for name, src, sub in _group_views(source, spec):
        r = _rank_queries(src, sub, opts, name or "fiq")
        metrics.update(_recalls(r, (10, 50), f"{name}_" if name else ""))
        details["n_tied"] += r.n_tied
        qi = spec.groups[name][0] if spec.groups else torch.arange(spec.n_query)
        parts.append((name, qi, sub.n_gallery, sub.exclude, r.stats))
    if spec.groups:
        names = list(spec.groups)
        metrics["avg_R10"] = float(np.mean([metrics[f"{n}_R10"] for n in names]))
        metrics["avg_R50"] = float(np.mean([metrics[f"{n}_R50"] for n in names]))
        metrics["avg"] = (metrics["avg_R10"] + metrics["avg_R50"]) / 2.0
    return EvalResult(metrics, details, outcomes=per_query.fiq(spec, parts))


@register_protocol("fiq_a", headline=FIQ_HEADLINE, metric_values=values.fiq_values)
def fiq_a(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """FashionIQ, CLIP4Cir convention: the candidate stays in the gallery."""
    if spec.exclude is not None and bool((spec.exclude >= 0).any()):
        raise ValueError(
            "fiq_a keeps the candidate in the gallery (docs/protocols.md §4.1); use fiq_b to exclude it"
        )
    return _fiq(source, spec, opts)


@register_protocol("fiq_b", headline=FIQ_HEADLINE, metric_values=values.fiq_values)
def fiq_b(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """FashionIQ, ARTEMIS convention: two queries per triplet, the candidate excluded."""
    if spec.exclude is None:
        raise ValueError(
            "fiq_b excludes each query's candidate image: pass `exclude` (docs/protocols.md §4.1)"
        )
    return _fiq(source, spec, opts)


@register_protocol(
    "cirr",
    headline=("avg", "R1", "R5", "R10", "R50", "Rsub1", "Rsub2", "Rsub3"),
    submission=_cirr_submission,
    metric_values=values.cirr_values,
)
def cirr(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """CIRR: reference excluded; R@1/5/10/50, Recall_subset@1/2/3 within img_set, avg = (R5 + Rsub1)/2.

    Without targets (test1) it only ranks, keeping the top-50 and subset orders for the submission files.
    """
    if spec.exclude is None:
        raise ValueError("cirr excludes each query's reference image: pass `exclude`")
    if spec.subsets is None:
        raise ValueError("cirr needs the img_set members of each query (`subsets`) for Recall_subset")
    keep = opts.keep_lists or spec.query_labels is None
    d = Direction(
        source=source,
        row_labels=spec.query_labels,
        col_labels=spec.gallery_labels,
        exclude=spec.exclude,
        subsets=spec.subsets,
        topk=50 if keep else 0,
        name="cirr",
    )
    st = direction_stats(d, opts)
    arrays = {k: st[k] for k in ("topk", "sub_order") if k in st and keep}
    if spec.query_labels is None:
        return EvalResult({}, {"submission_only": True}, arrays)
    r = Ranked(st)
    metrics = _recalls(r, (1, 5, 10, 50))
    for k in (1, 2, 3):
        metrics[f"Rsub{k}"] = 100.0 * float((st["sub_rank"] < k).double().mean())
    metrics["avg"] = (metrics["R5"] + metrics["Rsub1"]) / 2.0
    return EvalResult(metrics, {"n_tied": r.n_tied}, arrays, per_query.cirr(spec, st))


@register_protocol("f200k", headline=("R1", "R10", "R50"), metric_values=values.f200k_values)
def f200k(source: ScoreSource, spec: EvalSpec, opts: Options) -> EvalResult:
    """Fashion200K (google/tirg): the source excluded; a hit is any top-K image with the target caption."""
    if spec.exclude is None:
        raise ValueError("f200k excludes each query's source image: pass `exclude`")
    r = _rank_queries(source, spec, opts, "f200k")
    outcomes = per_query.f200k(spec, r.stats)
    return EvalResult(_recalls(r, (1, 5, 10, 50, 100)), {"n_tied": r.n_tied}, outcomes=outcomes)
