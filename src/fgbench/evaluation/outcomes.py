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
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return atomic_write_bytes(path, buf.getvalue())


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
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
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
METRIC_VALUES: dict[str, MetricFn] = {}


def register_metric_values(*protocols: str) -> Callable[[MetricFn], MetricFn]:
    """Register how a protocol's metrics decompose into per-unit values."""

    def deco(fn: MetricFn) -> MetricFn:
        for p in protocols:
            METRIC_VALUES[p] = fn
        return fn

    return deco


def metric_values(outcomes: QueryOutcomes, metric: str) -> MetricSample:
    """The per-unit values whose mean is `metric` (a key of the protocol's metrics, e.g. "R1", "rsum")."""
    if outcomes.protocol not in METRIC_VALUES:
        raise KeyError(f"no per-query decomposition for protocol {outcomes.protocol!r}")
    return METRIC_VALUES[outcomes.protocol](outcomes, metric)


def _by_query(d: DirectionOutcomes, metric: str, values: np.ndarray) -> MetricSample:
    order = np.argsort(d.ids, kind="stable")
    return MetricSample(metric, np.asarray(d.ids)[order], values.astype(np.float64)[order])


def _recall_k(metric: str, prefix: str = "") -> int | None:
    """K of "R10" (or "<prefix>R10"); None when `metric` is not a recall."""
    rest = metric[len(prefix) :] if metric.startswith(prefix) else ""
    return int(rest[1:]) if rest[:1] == "R" and rest[1:].isdigit() else None


@register_metric_values("person_t2i")
def _person(o: QueryOutcomes, metric: str) -> MetricSample:
    d = o.directions["t2i"]
    k = _recall_k(metric)
    if k is not None:
        return _by_query(d, metric, 100.0 * (d.first < k))
    per = {"mAP": "ap", "mINP": "inp"}
    if metric in per:
        return _by_query(d, metric, 100.0 * d.stats[per[metric]])
    raise KeyError(f"person_t2i has no per-query metric {metric!r}; known: R<K>, mAP, mINP")
