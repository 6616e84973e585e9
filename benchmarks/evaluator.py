"""Speed and peak-memory benchmark of the suite's evaluator (`fgbench.evaluation.evaluate`).

Cases (docs/protocols.md §1, §3):

- ``person_t2i``: CUHK-PEDES test scale, 6,156 captions x 3,074 images, 1,000 identities; ours vs
  torchmetrics 1.9 (``RetrievalHitRate`` @1/5/10 + ``RetrievalMAP``) vs a naive NumPy argsort.
- ``coco_5k``: 5,000 images x 25,000 captions, both directions; ours vs NumPy vs torchmetrics (the last run
  under a memory and time limit, reported as skipped when it goes past one).
- ``function_100k``: ours alone on a 100,000 x 100,000 score *function* (``FunctionSource``), never
  materialised.

Every measurement runs in its own child process (``--child CASE --impl IMPL``): the child builds the inputs,
resets the kernel's RSS high-water mark, then times the metric computation alone with ``time.perf_counter``
and reports the peak RSS increase over the RSS after the inputs were built. Inputs are generated once by the
parent (seeded) and handed to the children as ``.npy`` files, so every implementation scores the same matrix.
Scores are float32 ``cosine + 1``: positive, because torchmetrics >= 1.8 treats scores <= 0 as non-relevant
(docs/protocols.md §6.2); the shift does not change any order.

    .venv/bin/python benchmarks/evaluator.py            # full run (make bench), several minutes on 2 cores
    .venv/bin/python benchmarks/evaluator.py --quick    # every case ~25-50x smaller, well under a minute
    .venv/bin/python benchmarks/evaluator.py --only coco_5k
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _bench import ROOT, Outcome, fmt, loadavg, out_csv, render, status_kb, write_csv

SEED = 0
CHECK_RTOL = 1e-6  # relative agreement required between implementations
GOAL_SPEEDUP, GOAL_MEM_FRACTION, GOAL_FUNCTION_PEAK_MB = 10.0, 0.1, 4096.0
DEFAULT_CHILD_TIMEOUT_S = 1800.0


# -- cases ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One benchmark case: its sizes (full and quick), its implementations and optional per-impl limits."""

    name: str
    full: dict[str, int]
    quick: dict[str, int]
    impls: tuple[str, ...]
    check_keys: tuple[str, ...]  # metrics that must agree across implementations
    r1_keys: tuple[str, ...]  # shown in the R@1 column
    extra_key: str  # shown in the mAP / rsum column
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)  # impl -> (max RSS MB, max s)
    quick_skip: dict[str, str] = field(default_factory=dict)  # impl -> why --quick leaves it out

    def sizes(self, quick: bool) -> dict[str, int]:
        return self.quick if quick else self.full


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "person_t2i",
            full={"n_img": 3074, "n_cap": 6156, "n_id": 1000, "dim": 512},
            quick={"n_img": 308, "n_cap": 616, "n_id": 100, "dim": 512},
            impls=("ours", "torchmetrics", "numpy"),
            check_keys=("R1", "R5", "R10", "mAP"),
            r1_keys=("R1",),
            extra_key="mAP",
        ),
        Case(
            "coco_5k",
            full={"n_img": 5000, "n_cap": 25000, "dim": 512},
            quick={"n_img": 200, "n_cap": 1000, "dim": 512},
            impls=("ours", "torchmetrics", "numpy"),
            check_keys=("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "rsum"),
            r1_keys=("i2t_R1", "t2i_R1"),
            extra_key="rsum",
            limits={"torchmetrics": (8192.0, 420.0)},
            quick_skip={
                "torchmetrics": "--quick (its import and per-query loop cost ~15 s; covered on person_t2i)"
            },
        ),
        Case(
            "itm_pairwise",
            full={"n_img": 1000, "caps": 5, "regions": 36, "words": 12, "dim": 64},
            quick={"n_img": 100, "caps": 5, "regions": 8, "words": 6, "dim": 32},
            impls=("ours", "two_walk"),
            check_keys=("i2t_R1", "i2t_R5", "i2t_R10", "t2i_R1", "t2i_R5", "t2i_R10", "rsum"),
            r1_keys=("i2t_R1", "t2i_R1"),
            extra_key="rsum",
        ),
        Case(
            "function_100k",
            full={"n": 100_000, "dim": 256},
            quick={"n": 4_000, "dim": 256},
            impls=("ours",),
            check_keys=(),
            r1_keys=("R1",),
            extra_key="mAP",
        ),
    )
}


# -- inputs (NumPy only, so the NumPy child never imports torch) ----------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scores(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """float32 cosine + 1 (positive for torchmetrics >= 1.8; same order as the cosine)."""
    return (_normalise(queries) @ _normalise(gallery).T + np.float32(1.0)).astype(np.float32)


def _positive_index(ql: np.ndarray, gl: np.ndarray) -> np.ndarray:
    """[Q, P] gallery indices of each query's positives (same label), -1 padded."""
    order = np.argsort(gl, kind="stable")
    start = np.searchsorted(gl[order], ql, side="left")
    count = np.searchsorted(gl[order], ql, side="right") - start
    ar = np.arange(max(1, int(count.max())))
    idx = order[np.minimum(start[:, None] + ar, len(gl) - 1)]
    return np.where(ar < count[:, None], idx, -1)


def _tied_positives(s: np.ndarray, ql: np.ndarray, gl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of positive scores that equal another candidate's score in the same row."""
    pos = _positive_index(ql, gl)
    rows_out, cols_out = [], []
    step = max(1, (1 << 26) // (pos.shape[1] * s.shape[1]))
    for r0 in range(0, s.shape[0], step):
        blk, p = s[r0 : r0 + step], pos[r0 : r0 + step]
        ps = np.take_along_axis(blk, np.maximum(p, 0), axis=1)
        n_eq = (blk[:, None, :] == ps[:, :, None]).sum(-1)
        r, j = np.nonzero((n_eq > 1) & (p >= 0))
        rows_out.append(r + r0)
        cols_out.append(p[r, j])
    return np.concatenate(rows_out), np.concatenate(cols_out)


def detie(s: np.ndarray, ql: np.ndarray, gl: np.ndarray, both_ways: bool) -> int:
    """Nudge (in place) every positive score tied with another candidate up by one float32 ulp, until none
    is; returns how many were nudged. float32 cosines of thousands of items do collide (a few per case),
    and torchmetrics orders ties arbitrarily where docs/protocols.md §0 breaks them by index."""
    nudged = 0
    for _ in range(20):
        r, c = _tied_positives(s, ql, gl)
        if both_ways:
            rt, ct = _tied_positives(s.T, gl, ql)
            r, c = np.concatenate([r, ct]), np.concatenate([c, rt])
        if r.size == 0:
            return nudged
        s[r, c] = np.nextafter(s[r, c], np.float32(np.inf))
        nudged += int(r.size)
    raise RuntimeError("could not remove ties among positive scores")


def person_inputs(sz: dict[str, int]) -> dict[str, np.ndarray]:
    """Captions x images with identities: ~3 images per id, 2 captions per image (a few get a third)."""
    rng = np.random.default_rng(SEED)
    n_img, n_cap, n_id, d = sz["n_img"], sz["n_cap"], sz["n_id"], sz["dim"]
    g_lab = rng.permutation(np.arange(n_img) % n_id)
    centres = rng.standard_normal((n_id, d), dtype=np.float32)
    img = centres[g_lab] + rng.standard_normal((n_img, d), dtype=np.float32)
    extra = rng.choice(n_img, n_cap - 2 * n_img, replace=False)
    cap_img = np.concatenate([np.repeat(np.arange(n_img), 2), extra])
    cap = img[cap_img] + 7.5 * rng.standard_normal((n_cap, d), dtype=np.float32)
    out = {"scores": _scores(cap, img), "query_labels": g_lab[cap_img], "gallery_labels": g_lab}
    out["n_nudged"] = np.array(detie(out["scores"], out["query_labels"], g_lab, both_ways=False))
    return out


def coco_inputs(sz: dict[str, int]) -> dict[str, np.ndarray]:
    """Images x captions, caption c belongs to image c // 5."""
    rng = np.random.default_rng(SEED)
    n_img, n_cap, d = sz["n_img"], sz["n_cap"], sz["dim"]
    img = rng.standard_normal((n_img, d), dtype=np.float32)
    cap = np.repeat(img, n_cap // n_img, axis=0) + 6.0 * rng.standard_normal((n_cap, d), dtype=np.float32)
    out = {
        "scores": _scores(img, cap),
        "query_labels": np.arange(n_img),
        "gallery_labels": np.arange(n_cap) // (n_cap // n_img),
    }
    out["n_nudged"] = np.array(
        detie(out["scores"], out["query_labels"], out["gallery_labels"], both_ways=True)
    )
    return out


INPUTS: dict[str, Callable[[dict[str, int]], dict[str, np.ndarray]]] = {
    "person_t2i": person_inputs,
    "coco_5k": coco_inputs,
}


def write_inputs(case: Case, quick: bool, cache: Path) -> None:
    """Generate a matrix case's inputs once, for every child to load."""
    inp = INPUTS[case.name](case.sizes(quick))
    if float(inp["scores"].min()) <= 0.0:
        raise AssertionError("scores must be > 0: torchmetrics >= 1.8 treats scores <= 0 as non-relevant")
    print(
        f"[{case.name}] inputs: scores in [{inp['scores'].min():.3f}, {inp['scores'].max():.3f}]; "
        f"{int(inp['n_nudged'])} positive scores tied with another candidate, nudged up by one float32 ulp",
        flush=True,
    )
    for key, arr in inp.items():
        np.save(cache / f"{case.name}.{key}.npy", arr)


def load_inputs(case: Case, quick: bool, cache: Path | None) -> dict[str, np.ndarray]:
    """The cached inputs, or freshly generated ones when the child runs on its own."""
    if cache is not None and (cache / f"{case.name}.scores.npy").exists():
        keys = ("scores", "query_labels", "gallery_labels")
        return {k: np.load(cache / f"{case.name}.{k}.npy") for k in keys}
    return INPUTS[case.name](case.sizes(quick))


# -- memory -------------------------------------------------------------------------------------------


class PeakMeter:
    """Peak RSS above a baseline: the kernel high-water mark (reset via clear_refs) or, failing that, a
    5 ms sampling thread."""

    def __init__(self) -> None:
        gc.collect()
        self.exact = self._reset_hwm()
        self.base_kb = status_kb("VmRSS")
        self.sampled_kb = self.base_kb
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.exact:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.sampled_kb = max(self.sampled_kb, status_kb("VmRSS"))

    def stop(self) -> tuple[float, float]:
        """(peak extra MB over the baseline, peak total MB of the process since the reset)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = status_kb("VmHWM") if self.exact else max(self.sampled_kb, status_kb("VmRSS"))
        return (peak - self.base_kb) / 1024.0, peak / 1024.0


# -- implementations (run in the child) ------------------------------------------------------------------


def ours_matrix(case: Case, inp: dict[str, np.ndarray]) -> Callable[[], dict[str, Any]]:
    """`evaluate` on the dense score matrix."""
    import torch

    from fgbench.evaluation import EvalSpec, evaluate

    scores = torch.from_numpy(inp["scores"])
    spec = EvalSpec(case.name, torch.from_numpy(inp["query_labels"]), torch.from_numpy(inp["gallery_labels"]))

    def run() -> dict[str, Any]:
        res = evaluate(scores, spec)
        return {**res.metrics, **{k: v for k, v in res.details.items() if k.endswith("n_tied")}}

    return run


def numpy_person(inp: dict[str, np.ndarray]) -> dict[str, Any]:
    """Naive person_t2i: full stable argsort of every row, ranks of the positives, R@K and AP."""
    s, ql, gl = inp["scores"], inp["query_labels"], inp["gallery_labels"]
    order = np.argsort(-s, axis=1, kind="stable")
    rel = gl[order] == ql[:, None]
    cum = np.cumsum(rel, axis=1)
    prec = cum / np.arange(1, s.shape[1] + 1)
    ap = (prec * rel).sum(1) / rel.sum(1)
    out = {f"R{k}": 100.0 * float(rel[:, :k].any(1).mean()) for k in (1, 5, 10)}
    out["mAP"] = 100.0 * float(ap.mean())
    return out


def _numpy_first_ranks(s: np.ndarray, ql: np.ndarray, gl: np.ndarray) -> np.ndarray:
    order = np.argsort(-s, axis=1, kind="stable")
    return (gl[order] == ql[:, None]).argmax(1)


def numpy_coco(inp: dict[str, np.ndarray]) -> dict[str, Any]:
    """Naive coco_5k: full argsort per direction, rank of the best positive, R@K and rsum."""
    s, il, cl = inp["scores"], inp["query_labels"], inp["gallery_labels"]
    out: dict[str, Any] = {}
    for name, ranks in (("i2t", _numpy_first_ranks(s, il, cl)), ("t2i", _numpy_first_ranks(s.T, cl, il))):
        out.update({f"{name}_R{k}": 100.0 * float((ranks < k).mean()) for k in (1, 5, 10)})
    out["rsum"] = sum(out[f"{d}_R{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


def _tm_direction(scores: Any, ql: Any, gl: Any, with_map: bool, chunk: int = 256) -> dict[str, float]:
    """torchmetrics on one direction, fed `chunk` queries per update as in a validation loop."""
    import torch
    from torchmetrics import MetricCollection
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

    metrics: dict[str, Any] = {f"R{k}": RetrievalHitRate(top_k=k) for k in (1, 5, 10)}
    if with_map:
        metrics["mAP"] = RetrievalMAP()
    coll = MetricCollection(metrics)
    for s0 in range(0, scores.shape[0], chunk):
        block = scores[s0 : s0 + chunk]
        rows = torch.arange(s0, s0 + block.shape[0])
        target = ql[rows][:, None] == gl[None, :]
        coll.update(block.flatten(), target.flatten(), rows[:, None].expand_as(block).flatten())
    out = {k: 100.0 * float(v) for k, v in coll.compute().items()}
    coll.reset()
    return out


def tm_matrix(case: Case, inp: dict[str, np.ndarray]) -> Callable[[], dict[str, Any]]:
    """torchmetrics 1.9 retrieval metrics on the (already positive) scores."""
    import torch
    import torchmetrics  # noqa: F401  (imported before the measurement starts)

    scores = torch.from_numpy(inp["scores"])
    ql, gl = torch.from_numpy(inp["query_labels"]), torch.from_numpy(inp["gallery_labels"])

    def run() -> dict[str, Any]:
        if case.name == "person_t2i":
            return _tm_direction(scores, ql, gl, with_map=True)
        out = {f"i2t_{k}": v for k, v in _tm_direction(scores, ql, gl, False).items()}
        gc.collect()
        out.update({f"t2i_{k}": v for k, v in _tm_direction(scores.T, gl, ql, False).items()})
        out["rsum"] = sum(out[f"{d}_R{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
        return out

    return run


def ours_function(case: Case, quick: bool) -> Callable[[], dict[str, Any]]:
    """`evaluate` on a FunctionSource over random embeddings, diagonal labels (one positive per query)."""
    import torch

    from fgbench.evaluation import EvalSpec, FunctionSource, evaluate

    sz = case.sizes(quick)
    n, d = sz["n"], sz["dim"]
    gen = torch.Generator().manual_seed(SEED)
    q = torch.randn(n, d, generator=gen)
    g = torch.nn.functional.normalize(q + 3.0 * torch.randn(n, d, generator=gen), dim=1)
    q = torch.nn.functional.normalize(q, dim=1)
    labels = torch.arange(n)
    spec = EvalSpec("person_t2i", labels, labels)
    fn_seconds = [0.0]

    def score_fn(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = q[rows] @ g[cols].T
        fn_seconds[0] += time.perf_counter() - t
        return out

    source = FunctionSource(score_fn, n, n)
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] >= 10.0:
            last[0] = now
            print(f"  [function_100k] block {done}/{total}, {now - t0:.0f} s", file=sys.stderr, flush=True)

    def run() -> dict[str, Any]:
        nonlocal t0
        t0 = last[0] = time.perf_counter()
        res = evaluate(source, spec, progress=progress)
        return {**res.metrics, "n_tied": res.details.get("n_tied"), "score_fn_seconds": fn_seconds[0]}

    return run


def ours_itm_pairwise(case: Case, quick: bool, one_walk: bool) -> Callable[[], dict[str, Any]]:
    """f30k_1k on a TERAN-like pairwise scorer (mean over words of the best region's cosine), every pair
    scored by a FunctionSource: the one-walk path (ours) against the two-walk one (each direction walks)."""
    import torch

    from fgbench.evaluation import EvalSpec, FunctionSource, evaluate

    sz = case.sizes(quick)
    n_img, n_cap = sz["n_img"], sz["n_img"] * sz["caps"]
    gen = torch.Generator().manual_seed(SEED)
    img = torch.randn(n_img, sz["regions"], sz["dim"], generator=gen)
    own = img[torch.arange(n_cap) // sz["caps"], : sz["words"]]
    cap = own + 3.5 * torch.randn(n_cap, sz["words"], sz["dim"], generator=gen)
    img, cap = torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(cap, dim=-1)
    fn_seconds, pairs = [0.0], [0]

    def score_fn(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = torch.einsum("ard,bwd->abrw", img[rows], cap[cols]).amax(2).mean(-1)
        fn_seconds[0] += time.perf_counter() - t
        pairs[0] += rows.numel() * cols.numel()
        return out

    source = FunctionSource(score_fn, n_img, n_cap, col_block=128)
    spec = EvalSpec("f30k_1k", torch.arange(n_img), torch.arange(n_cap) // sz["caps"])

    def run() -> dict[str, Any]:
        res = evaluate(source, spec, one_walk=one_walk)
        return {
            **res.metrics,
            **{k: v for k, v in res.details.items() if k.endswith("n_tied")},
            "score_fn_seconds": fn_seconds[0],
            "pairs_scored": pairs[0],
        }

    return run


def child(case_name: str, impl: str, quick: bool, cache: Path | None) -> dict[str, Any]:
    """Build the inputs, then measure one implementation; the result goes to stdout as JSON."""
    case = CASES[case_name]
    if case_name == "function_100k":
        run = ours_function(case, quick)
    elif case_name == "itm_pairwise":
        run = ours_itm_pairwise(case, quick, one_walk=impl == "ours")
    else:
        inp = load_inputs(case, quick, cache)
        if impl == "ours":
            run = ours_matrix(case, inp)
        elif impl == "torchmetrics":
            run = tm_matrix(case, inp)
        else:
            fn = numpy_person if case_name == "person_t2i" else numpy_coco

            def run() -> dict[str, Any]:
                return fn(inp)

    meter = PeakMeter()
    t0 = time.perf_counter()
    metrics = run()
    seconds = time.perf_counter() - t0
    extra_mb, total_mb = meter.stop()
    return {
        "seconds": seconds,
        "peak_extra_mb": extra_mb,
        "peak_total_mb": total_mb,
        "hwm_exact": meter.exact,
        "metrics": metrics,
    }


# -- parent: run the children, check, tabulate --------------------------------------------------------


@dataclass
class Row(Outcome):
    """One case x implementation measurement (or the reason it has none)."""

    case: str
    impl: str
    seconds: float | None = None
    peak_extra_mb: float | None = None
    peak_total_mb: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def run_child(case: Case, impl: str, quick: bool, cache: Path, limit: tuple[float, float] | None) -> Row:
    """Run one measurement in a subprocess; kill it past its memory/time limit (polled every 0.1 s)."""
    cmd = [sys.executable, __file__, "--child", case.name, "--impl", impl, "--cache", str(cache)]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    max_mb, max_s = limit or (float("inf"), DEFAULT_CHILD_TIMEOUT_S)
    t0, peak_mb = time.perf_counter(), 0.0
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, env=env)
        reason = ""
        while proc.poll() is None:
            try:
                peak_mb = max(peak_mb, status_kb("VmRSS", proc.pid) / 1024.0)
            except (OSError, RuntimeError):
                pass
            elapsed = time.perf_counter() - t0
            if peak_mb > max_mb or elapsed > max_s:
                reason = (
                    f"RSS {peak_mb:.0f} MB > {max_mb:.0f} MB limit after {elapsed:.0f} s"
                    if peak_mb > max_mb
                    else f"still running after the {max_s:.0f} s limit (RSS {peak_mb:.0f} MB)"
                )
                proc.kill()
                proc.wait()
                break
            time.sleep(0.1)
        if reason:
            return Row(case.name, impl, status="skipped", note=reason)
        if proc.returncode != 0:
            return Row(case.name, impl, status="failed", note=f"child exit code {proc.returncode}")
        out.seek(0)
        res = json.loads(out.read().strip().splitlines()[-1])
    return _row_from_result(case.name, impl, res)


def _row_from_result(case: str, impl: str, res: dict[str, Any]) -> Row:
    """A successful child's JSON as a Row, with notes on ties, score-function time and the peak method."""
    m = res["metrics"]
    notes = [] if res["hwm_exact"] else ["peak sampled every 5 ms (no clear_refs)"]
    tied = sum(int(v) for k, v in m.items() if k.endswith("n_tied") and v)
    if impl == "ours":
        notes.append(f"n_tied {tied}")
    if "score_fn_seconds" in m:
        notes.append(f"{m['score_fn_seconds']:.0f} s of it in the score function")
    if "pairs_scored" in m:
        notes.append(f"{m['pairs_scored']:,} pairs scored")
    return Row(
        case,
        impl,
        seconds=res["seconds"],
        peak_extra_mb=res["peak_extra_mb"],
        peak_total_mb=res["peak_total_mb"],
        metrics=m,
        note="; ".join(notes),
    )


def check_agreement(case: Case, rows: list[Row]) -> list[str]:
    """Compare every implementation's check metrics with ours; return the failures (printed either way)."""
    ours = next((r for r in rows if r.impl == "ours" and r.status == "ok"), None)
    failures: list[str] = []
    if ours is None or not case.check_keys:
        return failures
    for r in rows:
        if r.impl == "ours" or r.status != "ok":
            continue
        diffs = {
            k: abs(r.metrics[k] - ours.metrics[k]) / max(abs(ours.metrics[k]), 1e-12) for k in case.check_keys
        }
        worst = max(diffs, key=lambda k: diffs[k])
        ok = diffs[worst] <= CHECK_RTOL
        shown = ", ".join(f"{k} {ours.metrics[k]:.4f}/{r.metrics[k]:.4f}" for k in case.check_keys)
        print(
            f"check {case.name}: ours vs {r.impl}: {'OK' if ok else 'MISMATCH'} "
            f"(max rel diff {diffs[worst]:.2e} on {worst}; ours/{r.impl}: {shown})"
        )
        if not ok:
            failures.append(f"{case.name}/{r.impl}")
    return failures


def table_rows(rows: list[Row]) -> list[dict[str, str]]:
    """Rows as display strings, with time and memory ratios against ours in the same case."""
    ours = {r.case: r for r in rows if r.impl == "ours" and r.status == "ok"}
    out = []
    for r in rows:
        case, base = CASES[r.case], ours.get(r.case)
        t_ratio = m_ratio = None
        if r.status == "ok" and base is not None and base.seconds and base.peak_extra_mb:
            t_ratio = r.seconds / base.seconds if r.seconds is not None else None
            m_ratio = r.peak_extra_mb / base.peak_extra_mb if r.peak_extra_mb is not None else None
        r1 = " / ".join(fmt(r.metrics.get(k), ".2f") for k in case.r1_keys) if r.metrics else "-"
        note = r.note if r.status == "ok" else f"{r.status}: {r.note}"
        out.append(
            {
                "case": r.case,
                "impl": r.impl,
                "seconds": fmt(r.seconds, ".2f"),
                "peak extra MB": fmt(r.peak_extra_mb, ".0f"),
                "peak total MB": fmt(r.peak_total_mb, ".0f"),
                "R@1": r1,
                "mAP / rsum": fmt(r.metrics.get(case.extra_key), ".2f") if r.metrics else "-",
                "time x ours": fmt(t_ratio, ".1f"),
                "mem x ours": fmt(m_ratio, ".1f"),
                "note": note,
            }
        )
    return out


RIGHT = {"seconds", "peak extra MB", "peak total MB", "R@1", "mAP / rsum", "time x ours", "mem x ours"}


def csv_rows(rows: list[Row], disp: list[dict[str, str]], quick: bool) -> list[dict[str, object]]:
    """Raw numbers plus the display ratios."""
    return [
        {
            "case": r.case,
            "impl": r.impl,
            "quick": quick,
            "status": r.status,
            "seconds": r.seconds,
            "peak_extra_mb": r.peak_extra_mb,
            "peak_total_mb": r.peak_total_mb,
            "r1": d["R@1"],
            "map_or_rsum": d["mAP / rsum"],
            "time_ratio_vs_ours": d["time x ours"],
            "mem_ratio_vs_ours": d["mem x ours"],
            "metrics_json": json.dumps(r.metrics),
            "note": r.note,
        }
        for r, d in zip(rows, disp, strict=True)
    ]


def goals(rows: list[Row], quick: bool) -> list[str]:
    """The two stated goals, evaluated on this run's numbers."""
    by = {(r.case, r.impl): r for r in rows}
    out, scale = [], " (quick sizes, not the goal scale)" if quick else ""
    ours, tm = by.get(("person_t2i", "ours")), by.get(("person_t2i", "torchmetrics"))
    if ours and tm and ours.status == tm.status == "ok":
        speed = tm.seconds / ours.seconds
        frac = ours.peak_extra_mb / tm.peak_extra_mb
        met = speed >= GOAL_SPEEDUP and frac <= GOAL_MEM_FRACTION
        out.append(
            f"goal person_t2i: ours {speed:.1f}x faster than torchmetrics (goal >= {GOAL_SPEEDUP:.0f}x), "
            f"peak extra memory {frac:.3f} of torchmetrics' (goal <= {GOAL_MEM_FRACTION}): "
            f"{'MET' if met else 'NOT MET'}{scale}"
        )
    fn = by.get(("function_100k", "ours"))
    if fn and fn.status == "ok":
        met = fn.peak_total_mb < GOAL_FUNCTION_PEAK_MB
        out.append(
            f"goal function_100k: finished in {fn.seconds:.0f} s, peak RSS of the whole process "
            f"{fn.peak_total_mb:.0f} MB (extra {fn.peak_extra_mb:.0f} MB; "
            f"goal < {GOAL_FUNCTION_PEAK_MB:.0f} MB): "
            f"{'MET' if met else 'NOT MET'}{scale}"
        )
    return out


def parent(only: str | None, quick: bool, out_csv: Path) -> int:
    """Run every (or one) case, print the checks, the table and the goals; write the CSV."""
    names = [only] if only else list(CASES)
    rows: list[Row] = []
    failures: list[str] = []
    t_start = time.perf_counter()
    load_start = loadavg()
    print(f"load average (1/5/15 min) at start: {load_start}; torch threads: the default (all cores)")
    with tempfile.TemporaryDirectory(prefix="fgbench-bench-") as tmp:
        cache = Path(tmp)
        for name in names:
            case = CASES[name]
            if name in INPUTS:
                write_inputs(case, quick, cache)
            sz = ", ".join(f"{k}={v}" for k, v in case.sizes(quick).items())
            case_rows = []
            for impl in case.impls:
                if quick and impl in case.quick_skip:
                    case_rows.append(Row(name, impl, status="skipped", note=case.quick_skip[impl]))
                    continue
                print(f"[{name}] {impl} ({sz}) ...", flush=True)
                t_child = time.perf_counter()
                row = run_child(case, impl, quick, cache, case.limits.get(impl))
                print(
                    f"[{name}] {impl}: {row.status}, measured {fmt(row.seconds, '.2f')} s "
                    f"(child process {time.perf_counter() - t_child:.1f} s) {row.note}",
                    flush=True,
                )
                case_rows.append(row)
                if row.status == "failed" or (impl == "ours" and row.status != "ok"):
                    failures.append(f"{name}/{impl} {row.status}")
            failures += check_agreement(case, case_rows)
            rows += case_rows
    disp = table_rows(rows)
    print()
    print(render(disp, RIGHT))
    print()
    for g in goals(rows, quick):
        print(g)
    write_csv(out_csv, csv_rows(rows, disp, quick))
    print(f"CSV written to {out_csv}")
    print(
        f"total wall time {time.perf_counter() - t_start:.0f} s; load average at start {load_start}, "
        f"at end {loadavg()} (other processes on the machine slow every timing alike)"
    )
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shrink every case ~25-50x (fast test)")
    p.add_argument("--only", choices=list(CASES), help="run a single case")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV path (default results/evaluator.csv; --quick: results/quick/)",
    )
    p.add_argument("--child", choices=list(CASES), help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--cache", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.impl, args.quick, args.cache)), flush=True)
        return 0
    return parent(args.only, args.quick, out_csv(args.out, args.quick, "evaluator"))


if __name__ == "__main__":
    sys.exit(main())
