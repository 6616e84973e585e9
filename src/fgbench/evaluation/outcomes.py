"""Per-query outcomes: what a run's metrics are made of, query by query, keyed by stable query ids.

The evaluator's metrics are means over queries (or sums of such means), so a run's per-query statistics
are enough to recompute every headline metric, resample it (confidence intervals) and pair it with another
run on the same queries (significance tests, docs/statistics.md). They are stored beside result.json as
`outcomes.<split>[.<variant>].npz`: plain numeric and unicode arrays plus a JSON header, no pickles, written
atomically.

Query ids are stable across runs of the same dataset split (a caption id, a CIRR pair id, an image id), so
two runs are paired by id, never by position.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgbench.io import atomic_write_bytes

FORMAT_VERSION = 1


@dataclass
class DirectionOutcomes:
    """One retrieval direction's per-query statistics; every array is aligned with `ids`.

    `first` is the 0-based final rank of the query's first relevant item (after any re-rank), so
    R@K = mean(first < K). `stats` holds the rest the protocol's metrics need (e.g. "ap", "inp" for person
    retrieval, "sub_rank" for CIRR). `unit` names the resampling unit of each query where queries are not
    independent draws (image-text: the image a caption belongs to); None means each query is its own unit.
    """

    ids: np.ndarray  # str[Q]
    first: np.ndarray  # int64[Q]
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float64/int64 [Q]
    unit: np.ndarray | None = None  # str[Q]

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, arr in {"first": self.first, **self.stats, "unit": self.unit}.items():
            if arr is not None and len(arr) != n:
                raise ValueError(f"outcomes: {name!r} has {len(arr)} entries for {n} query ids")


@dataclass
class QueryOutcomes:
    """Every direction of one evaluation (protocol x split), with the header that names it."""

    protocol: str
    split: str
    directions: dict[str, DirectionOutcomes]
    info: dict[str, Any] = field(default_factory=dict)  # dataset, n_gallery, per-direction sizes...


def outcomes_file(split: str, variant: str = "") -> str:
    """`outcomes.test.npz`, or `outcomes.test.<variant>.npz` beside a test-time variant's result."""
    return f"outcomes.{split}.{variant}.npz" if variant else f"outcomes.{split}.npz"


def save_outcomes(path: str | Path, outcomes: QueryOutcomes) -> Path:
    """Write `outcomes` atomically as a compressed npz of plain arrays."""
    header = {
        "format_version": FORMAT_VERSION,
        "protocol": outcomes.protocol,
        "split": outcomes.split,
        "info": outcomes.info,
        "directions": {name: sorted(d.stats) for name, d in outcomes.directions.items()},
        "units": [name for name, d in outcomes.directions.items() if d.unit is not None],
    }
    arrays: dict[str, np.ndarray] = {"header": np.array(json.dumps(header, sort_keys=True))}
    for name, d in outcomes.directions.items():
        arrays[f"{name}.ids"] = np.asarray(d.ids, dtype=str)
        arrays[f"{name}.first"] = np.asarray(d.first, dtype=np.int64)
        for key, arr in d.stats.items():
            arrays[f"{name}.{key}"] = np.asarray(arr)
        if d.unit is not None:
            arrays[f"{name}.unit"] = np.asarray(d.unit, dtype=str)
    return atomic_write_bytes(path, _npz_bytes(arrays))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz (what np.load reads) with fixed entry dates: the same outcomes give the same bytes,
    so a re-test that measures the same thing rewrites the file identically."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def load_outcomes(path: str | Path) -> QueryOutcomes:
    """Read a file written by `save_outcomes`; one clear error naming the file if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        header = json.loads(str(data["header"]))
        directions = {}
        for name, stat_names in header["directions"].items():
            directions[name] = DirectionOutcomes(
                ids=data[f"{name}.ids"],
                first=data[f"{name}.first"],
                stats={k: data[f"{name}.{k}"] for k in stat_names},
                unit=data[f"{name}.unit"] if name in header["units"] else None,
            )
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no per-query outcomes (re-test the run to write them)") from None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path}: not a per-query outcomes file ({type(err).__name__}: {err})") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: outcomes format_version {header.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return QueryOutcomes(header["protocol"], header["split"], directions, header.get("info", {}))


@dataclass
class MetricSample:
    """Per-unit values of one metric: `values.mean()` equals the metric (percent) the evaluator reports.

    `units` are the resampling units (sorted, unique): bootstrap them, and pair two runs on them.
    """

    metric: str
    units: np.ndarray  # str[N]
    values: np.ndarray  # float64[N]


MetricFn = Callable[[QueryOutcomes, str], MetricSample]


def metric_values(outcomes: QueryOutcomes, metric: str) -> MetricSample:
    """The per-unit values whose mean is `metric` (a key of the protocol's metrics, e.g. "R1", "rsum"), by
    the decomposition its protocol registered (`Protocol.metric_values`)."""
    from fgbench.evaluation.protocols import PROTOCOLS  # the registry imports this module

    proto = PROTOCOLS.get(outcomes.protocol)
    if proto is None or proto.metric_values is None:
        raise KeyError(f"no per-query decomposition for protocol {outcomes.protocol!r}")
    return proto.metric_values(outcomes, metric)


def _by_query(d: DirectionOutcomes, metric: str, values: np.ndarray) -> MetricSample:
    order = np.argsort(d.ids, kind="stable")
    return MetricSample(metric, np.asarray(d.ids)[order], values.astype(np.float64)[order])


def _recall_k(metric: str, prefix: str = "") -> int | None:
    """K of "R10" (or "<prefix>R10"); None when `metric` is not a recall."""
    rest = metric[len(prefix) :] if metric.startswith(prefix) else ""
    return int(rest[1:]) if rest[:1] == "R" and rest[1:].isdigit() else None


def person_values(o: QueryOutcomes, metric: str) -> MetricSample:
    d = o.directions["t2i"]
    k = _recall_k(metric)
    if k is not None:
        return _by_query(d, metric, 100.0 * (d.first < k))
    per = {"mAP": "ap", "mINP": "inp"}
    if metric in per:
        return _by_query(d, metric, 100.0 * d.stats[per[metric]])
    raise KeyError(f"person_t2i has no per-query metric {metric!r}; known: R<K>, mAP, mINP")


def _hits(d: DirectionOutcomes, metric: str, prefix: str = "") -> np.ndarray | None:
    """100 * (first < K) of a recall metric "<prefix>R<K>"; None when `metric` is not one."""
    k = _recall_k(metric, prefix)
    return None if k is None else 100.0 * (d.first < k)


def _known(protocol: str, metric: str, known: str) -> KeyError:
    return KeyError(f"{protocol} has no per-query metric {metric!r}; known: {known}")


def class_reed_values(o: QueryOutcomes, metric: str) -> MetricSample:
    """AP50 per class query (precision@50), top1 per image query (its class ranked first)."""
    if metric == "AP50":
        d = o.directions["t2i"]
        return _by_query(d, metric, 100.0 * d.stats["below50"] / 50.0)
    if metric == "top1":
        d = o.directions["i2t"]
        return _by_query(d, metric, 100.0 * (d.first < 1))
    raise _known(o.protocol, metric, "AP50 (unit: class), top1 (unit: image)")


def itm_values(o: QueryOutcomes, metric: str) -> MetricSample:
    """Unit = image. An image's value is its own i2t value plus its captions' t2i values, each caption
    weighted by (images / captions) of its fold: the mean over images is then the metric, fold means and
    uneven captions per image included (folds hold equal numbers of images)."""
    i2t = o.directions["i2t"]
    images = np.asarray(i2t.ids)
    order = np.argsort(images, kind="stable")
    images = images[order]

    def per_image(d: DirectionOutcomes, values: np.ndarray) -> np.ndarray:
        if d is i2t:
            return values.astype(np.float64)[order]
        n_img = np.bincount(i2t.stats["fold"])
        n_cap = np.bincount(d.stats["fold"], minlength=len(n_img))
        w = n_img[d.stats["fold"]] / n_cap[d.stats["fold"]]
        pos = np.searchsorted(images, np.asarray(d.unit))
        if bool((pos >= len(images)).any()) or not bool(
            (images[pos.clip(max=len(images) - 1)] == d.unit).all()
        ):
            raise ValueError(f"{o.protocol}: a caption's image (unit) is not among the i2t queries")
        return np.bincount(pos, weights=w * values, minlength=len(images))

    def part(name: str, m: str) -> np.ndarray | None:
        d = o.directions[name]
        hits = _hits(d, m, f"{name}_")
        if hits is not None:
            return per_image(d, hits)
        if m == f"{name}_meanr":
            return per_image(d, d.first + 1.0)
        return None

    if metric == "rsum":
        total = np.zeros(len(images))
        for name in ("i2t", "t2i"):
            for k in (1, 5, 10):
                total += part(name, f"{name}_R{k}")  # type: ignore[operator]
        return MetricSample(metric, images, total)
    for name in ("i2t", "t2i"):
        if metric.startswith(f"{name}_"):
            values = part(name, metric)
            if values is not None:
                return MetricSample(metric, images, values)
    raise _known(
        o.protocol, metric, "i2t_R<K>, t2i_R<K>, rsum, i2t_meanr, t2i_meanr (medr: no decomposition)"
    )


def fiq_values(o: QueryOutcomes, metric: str) -> MetricSample:
    """Unit = query. "<category>_R<K>" over that category's queries; "avg_R<K>" and "avg" over all queries,
    each weighted by N / (categories x its category's queries), so the plain mean is the category average."""
    for name, d in o.directions.items():
        hits = _hits(d, metric, f"{name}_") if metric.startswith(f"{name}_") else None
        if hits is not None:
            return _by_query(d, metric, hits)
    if len(o.directions) == 1 and _recall_k(metric) is not None:  # no categories: plain R<K>
        d = next(iter(o.directions.values()))
        return _by_query(d, metric, 100.0 * (d.first < _recall_k(metric)))  # type: ignore[operator]
    k = _recall_k(metric, "avg_") if metric.startswith("avg_") else None
    if metric == "avg":
        ks: tuple[int, ...] = (10, 50)  # avg = (avg_R10 + avg_R50) / 2
    elif k is not None:
        ks = (k,)
    else:
        raise _known(o.protocol, metric, "<category>_R<K>, avg_R<K>, avg")
    n_total = sum(len(d.ids) for d in o.directions.values())
    ids, values = [], []
    for d in o.directions.values():
        w = n_total / (len(o.directions) * len(d.ids))
        ids.append(np.asarray(d.ids))
        values.append(w * np.mean([100.0 * (d.first < kk) for kk in ks], axis=0))
    both = DirectionOutcomes(np.concatenate(ids), np.zeros(n_total, dtype=np.int64))
    return _by_query(both, metric, np.concatenate(values))


def cirr_values(o: QueryOutcomes, metric: str) -> MetricSample:
    """Unit = query (pair id). R<K>, Rsub<K> (sub_rank < K), avg = (R5 + Rsub1) / 2."""
    d = o.directions["cirr"]
    hits = _hits(d, metric)
    if hits is not None:
        return _by_query(d, metric, hits)
    k = _recall_k("R" + metric[4:]) if metric.startswith("Rsub") else None
    if k is not None:
        return _by_query(d, metric, 100.0 * (d.stats["sub_rank"] < k))
    if metric == "avg":
        return _by_query(d, metric, 50.0 * ((d.first < 5).astype(float) + (d.stats["sub_rank"] < 1)))
    raise _known(o.protocol, metric, "R<K>, Rsub<K>, avg")


def f200k_values(o: QueryOutcomes, metric: str) -> MetricSample:
    """Unit = query. R<K>."""
    d = o.directions["f200k"]
    hits = _hits(d, metric)
    if hits is None:
        raise _known(o.protocol, metric, "R<K>")
    return _by_query(d, metric, hits)


# -- pairing runs -------------------------------------------------------------------------------------


def align(samples: dict[str, MetricSample] | list[MetricSample]) -> np.ndarray:
    """The units shared by every sample (runs of the same split), checked to be the same set.

    Raises ValueError naming the sample whose units differ and a few units one side lacks, so two runs are
    never paired on different queries (another split, a skip_missing drop, another caption policy).
    """
    named = dict(samples) if isinstance(samples, dict) else {f"#{i}": s for i, s in enumerate(samples)}
    if not named:
        raise ValueError("align: no samples")
    (ref_name, ref), *rest = named.items()
    for name, s in rest:
        if s.metric != ref.metric:
            raise ValueError(f"align: {name} holds {s.metric!r}, {ref_name} holds {ref.metric!r}")
        if len(s.units) == len(ref.units) and bool((s.units == ref.units).all()):
            continue
        only_ref = np.setdiff1d(ref.units, s.units)
        only_s = np.setdiff1d(s.units, ref.units)
        raise ValueError(
            f"align: {name} and {ref_name} are not on the same units ({len(s.units)} vs {len(ref.units)}); "
            f"{len(only_ref)} only in {ref_name} (e.g. {only_ref[:3].tolist()}), "
            f"{len(only_s)} only in {name} (e.g. {only_s[:3].tolist()})"
        )
    return ref.units


def same_queries(outcomes: dict[str, QueryOutcomes]) -> None:
    """Check that runs' outcomes are of the same evaluation: protocol, split, dataset and query ids."""
    (ref_name, ref), *rest = outcomes.items()
    for name, o in rest:
        for what, a, b in (
            ("protocol", o.protocol, ref.protocol),
            ("split", o.split, ref.split),
            ("dataset", o.info.get("dataset"), ref.info.get("dataset")),
            ("directions", sorted(o.directions), sorted(ref.directions)),
        ):
            if a != b:
                raise ValueError(f"{name} and {ref_name} differ in {what}: {a!r} vs {b!r}")
        for d in ref.directions:
            a_ids, b_ids = np.sort(o.directions[d].ids), np.sort(ref.directions[d].ids)
            if len(a_ids) != len(b_ids) or not bool((a_ids == b_ids).all()):
                only = np.setdiff1d(b_ids, a_ids)[:3].tolist()
                extra = np.setdiff1d(a_ids, b_ids)[:3].tolist()
                raise ValueError(
                    f"{name} and {ref_name} differ in the {d} queries ({len(a_ids)} vs {len(b_ids)}; "
                    f"only in {ref_name}: {only}, only in {name}: {extra})"
                )
