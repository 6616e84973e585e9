"""Evaluation throughput at paper scale: the suite's evaluation path (`RetrievalMethod.evaluate_features`:
the method's `score` in blocks through `FunctionSource`, the chunked evaluator, the protocol's metrics) on
synthetic features already on the device (issue 11).

Cases:

- ``person_global``: CUHK-PEDES test, 6,156 captions x 3,074 images (1,000 identities), 512-d globals, the
  dot-product scorer (`clip_ft`/`irra`), protocol ``person_t2i``;
- ``coco_global``: COCO 5K, 5,000 images x 25,000 captions, 1,024-d globals, dot product, ``coco_5k``
  (i2t and t2i);
- ``coco_teran_exact``: COCO 5K with TERAN's MrSw alignment (`methods/teran/alignment.py`, paper profile: words of the
  scored window of 88 word-pieces = 86 slots, 8-20 of them valid; 36 regions; d = 1,024; stored in bf16,
  scored in fp32) on every one of the 5,000 x 25,000 pairs; the suite walks the matrix once for both
  directions (plus a pre-pass of each image against its own captions);
- ``coco_teran_once``: the same scores computed once into the dense 25,000 x 5,000 matrix (500 MB), then
  evaluated: the one walk's cost without its blocks (a reference, not the suite's path);
- ``coco_teran_rerank``: TERAN with `global_aux_loss` and `rerank_k` = 100: the globals' top-100 of every
  query re-scored by the alignment (`rescore_pairs`), both directions;
- ``coco_teran_exact_padded``: ``coco_teran_exact`` with `score_buckets` off: every padded word slot
  multiplied (the scorer before length grouping), for the before/after ratio in one run;
- ``coco_teran_exact_bf16``: ``coco_teran_exact`` multiplying in bf16 (`score_dtype`);
- ``coco_racg_exact`` / ``coco_racg_exact_padded``: RACG's cross-graph attention (`methods/racg/scorer.py`, paper
  profile: 8 heads, no Â in the features, so β plays no part) on the same sets and pairs, grouped by length
  or padded.

Per pairwise case the table gives the useful FLOP rate (matmul FLOPs of the real word and region slots only,
counted from the masks of every `score` call: 2·d per word-region pair for TERAN; for RACG its two
word-region products 4·d and its two Gram-form products 2·H·(W + R) per word-region pair) and its ratio to a
plain matmul of the same dtype, measured in the same run at the shape of one length group's chunk
([256, d] x [d, min(images, 4,096)·36]).

Features are random but structured (each caption's words are noisy copies of its image's regions), so the
metrics are far from chance and the table's R@1 column shows the scorer ran on what it was given. Time is
wall clock around `evaluate_features` with the device synchronised; peak memory is the device's peak
(GPU: allocated tensors including the features; CPU: resident set above the start). Cases whose estimated
time on this device exceeds `--max-seconds` (the pairwise COCO 5K cases on a CPU) are skipped with the
estimate: from a timed slice of the case (`PROBE` captions x images at the case's shapes, pairs/s), and
from their FLOPs at the measured matmul rate of their dtype and shape.

    .venv/bin/python benchmarks/eval_throughput.py            # paper scale (a GPU)
    .venv/bin/python benchmarks/eval_throughput.py --quick    # tiny sizes on the CPU, seconds
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from _bench import (
    BenchParser,
    Outcome,
    PeakMemory,
    device_label,
    finish,
    fmt,
    header,
    log,
    matmul_rate,
    pick_device,
    render,
    sync,
    time_matmul,
)
from _fakes import Registry, method_class
from torch import Tensor

SCRIPT = "eval_throughput"  # its CSV: results/eval_throughput.csv
GOAL_PAIRWISE_S = 300.0  # "the pairwise evaluation of COCO 5K within a few minutes on one GPU"


@dataclass(frozen=True)
class Sizes:
    """Full (paper) and quick sizes of every case."""

    person_q: int = 6156  # CUHK-PEDES test captions
    person_g: int = 3074  # CUHK-PEDES test images
    person_ids: int = 1000
    person_dim: int = 512  # CLIP ViT-B/16 joint space
    coco_img: int = 5000
    coco_cap: int = 25000  # 5 captions per image
    coco_dim: int = 1024  # TERAN / VSE++ joint space
    words: int = 86  # TERAN's scored window: 88 word-pieces minus [CLS] and the last slot
    min_len: int = 8  # valid words per caption (COCO: ~11 word-pieces on average)
    max_len: int = 20
    regions: int = 36
    rerank_k: int = 100


FULL = Sizes()
QUICK = Sizes(
    person_q=616, person_g=308, person_ids=100, person_dim=64,
    coco_img=100, coco_cap=500, coco_dim=64,
    words=14, min_len=4, max_len=12, regions=36, rerank_k=10,
)  # fmt: skip


# -- synthetic features --------------------------------------------------------------------------------


def person_features(sz: Sizes, device: torch.device) -> tuple[Any, Any, Any]:
    """(caption Features, image Features, EvalSpec person_t2i): ~3 images per identity, 2 captions each."""
    from fgbench.evaluation import EvalSpec
    from fgbench.features import Features

    g = torch.Generator().manual_seed(0)
    img_id = torch.randperm(sz.person_g, generator=g) % sz.person_ids
    centres = torch.randn(sz.person_ids, sz.person_dim, generator=g)
    img = centres[img_id] + torch.randn(sz.person_g, sz.person_dim, generator=g)
    cap_img = torch.arange(sz.person_q) % sz.person_g
    cap = img[cap_img] + 7.5 * torch.randn(sz.person_q, sz.person_dim, generator=g)  # as evaluator.py
    q = Features(index=torch.arange(sz.person_q), glob=F.normalize(cap, dim=-1)).to(device)
    gal = Features(index=torch.arange(sz.person_g), glob=F.normalize(img, dim=-1)).to(device)
    return q, gal, EvalSpec("person_t2i", img_id[cap_img], img_id)


def coco_features(sz: Sizes, device: torch.device, with_sets: bool) -> tuple[Any, Any, Any]:
    """(caption Features, image Features, EvalSpec coco_5k), captions x images as the method encodes them.

    Globals always; with `with_sets`, TERAN's sets: regions [n_img, R, d] and words [n_cap, W, d] in bf16
    with masks, each valid word a noisy copy of one of its image's regions; globals = normalised means.
    """
    from fgbench.evaluation import EvalSpec
    from fgbench.features import Features

    g = torch.Generator(device=device).manual_seed(0)
    n_img, n_cap, d = sz.coco_img, sz.coco_cap, sz.coco_dim
    per = n_cap // n_img
    cap_img = torch.arange(n_cap, device=device) // per
    spec = EvalSpec("coco_5k", torch.arange(n_img), (torch.arange(n_cap) // per))
    if not with_sets:
        img = torch.randn(n_img, d, generator=g, device=device)
        cap = img[cap_img] + 6.0 * torch.randn(n_cap, d, generator=g, device=device)  # as evaluator.py
        q = Features(index=torch.arange(n_cap, device=device), glob=F.normalize(cap, dim=-1))
        gal = Features(index=torch.arange(n_img, device=device), glob=F.normalize(img, dim=-1))
        return q, gal, spec
    regions = F.normalize(torch.randn(n_img, sz.regions, d, generator=g, device=device), dim=-1)
    lengths = torch.randint(sz.min_len, sz.max_len + 1, (n_cap,), generator=g, device=device)
    wmask = torch.arange(sz.words, device=device)[None, :] < lengths[:, None]
    words = torch.empty(n_cap, sz.words, d, dtype=torch.bfloat16, device=device)
    step = max(1, (1 << 26) // (sz.words * d))
    for c0 in range(0, n_cap, step):  # in slices: the fp32 temporaries of 25,000 x 86 x 1,024 are 8.8 GB
        c1 = min(n_cap, c0 + step)
        pick = torch.randint(sz.regions, (c1 - c0, sz.words), generator=g, device=device)
        src = regions[cap_img[c0:c1, None], pick]
        noisy = F.normalize(src + 2.0 * torch.randn(src.shape, generator=g, device=device) / d**0.5, dim=-1)
        words[c0:c1] = noisy.masked_fill(~wmask[c0:c1, :, None], 0.0).to(torch.bfloat16)
    cap_glob = F.normalize(words.float().sum(1), dim=-1) if n_cap * sz.words * d < 1 << 28 else None
    if cap_glob is None:
        cap_glob = torch.cat(
            [F.normalize(words[i : i + step].float().sum(1), dim=-1) for i in range(0, n_cap, step)]
        )
    q = Features(index=torch.arange(n_cap, device=device), glob=cap_glob, tok=words, mask=wmask)
    gal = Features(
        index=torch.arange(n_img, device=device),
        glob=F.normalize(regions.sum(1), dim=-1),
        tok=regions.to(torch.bfloat16),
        mask=torch.ones(n_img, sz.regions, dtype=torch.bool, device=device),
    )
    return q, gal, spec


# -- cases ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """What one case scores, with which method, and its matmul FLOPs (for the skip estimate)."""

    scorer: str
    method: Any
    features: Callable[[], tuple[Any, Any, Any]]
    pairwise_pairs: int  # pairs the pairwise scorer evaluates (0: global scorer only)
    flops: float  # matmul FLOPs of the scoring
    once: bool = False  # score the matrix once, then evaluate it (not the suite's path)
    note: str = ""
    dtype: torch.dtype = torch.float32  # the scorer's matmul dtype
    useful: Callable[[Tensor, Tensor, int], float] | None = None  # (word ext, region ext, d) -> real FLOPs


CASES: Registry[Callable[[Sizes, torch.device], Case]] = Registry("case")
register_case = CASES.register


def _method(name: str, **kwargs: Any) -> Any:
    return method_class(name)(**kwargs)


@register_case("person_global")
def _person_global(sz: Sizes, device: torch.device) -> Case:
    return Case(
        "clip_ft dot product",
        _method("clip_ft"),
        lambda: person_features(sz, device),
        0,
        2.0 * sz.person_q * sz.person_g * sz.person_dim,
    )


@register_case("coco_global")
def _coco_global(sz: Sizes, device: torch.device) -> Case:
    return Case(
        "clip_ft dot product",
        _method("clip_ft"),
        lambda: coco_features(sz, device, with_sets=False),
        0,
        2 * 2.0 * sz.coco_img * sz.coco_cap * sz.coco_dim,
    )


def _alignment_flops(pairs: float, sz: Sizes, words: float | None = None) -> float:
    return 2.0 * pairs * (sz.words if words is None else words) * sz.regions * sz.coco_dim


def _mean_words(sz: Sizes) -> float:
    return (sz.min_len + sz.max_len) / 2


def teran_useful(w: Tensor, r: Tensor, d: int) -> float:
    """TERAN's real matmul FLOPs of captions (word extents w) x images (region extents r): 2·d per pair of
    real word and region slots."""
    return 2.0 * d * float(w.sum()) * float(r.sum())


def racg_useful(w: Tensor, r: Tensor, d: int, heads: int = 8) -> float:
    """RACG's real matmul FLOPs: Q = t̂·v and P̃ = v̂·t (2·d each per word-region pair), ‖a'_w‖² through
    Vʰ Vʰᵀ (2·H·R per pair) and ‖c'_r‖² through Tʰ Tʰᵀ (2·H·W per pair)."""
    w, r = w.double(), r.double()
    return float(
        4.0 * d * w.sum() * r.sum() + 2.0 * heads * ((w * w).sum() * r.sum() + w.sum() * (r * r).sum())
    )


def _racg_flops(pairs: float, sz: Sizes, words: float) -> float:
    w, r = words, sz.regions
    return pairs * (4.0 * sz.coco_dim * w * r + 2.0 * 8 * (w * w * r + w * r * r))


@dataclass(frozen=True)
class Exact:
    """An exact pairwise COCO 5K case: the method, its overrides and how its matmul FLOPs are counted."""

    scorer: str
    method: str
    overrides: dict[str, Any]
    padded: bool  # FLOPs over every word slot (the scorer before length grouping) or the mean real words
    note: str
    dtype: torch.dtype = torch.float32


EXACT = {
    "coco_teran_exact": Exact(
        "teran MrSw, exact", "teran", {}, False, "one walk: each pair scored once for i2t and t2i"
    ),
    "coco_teran_exact_padded": Exact(
        "teran MrSw, exact, padded", "teran", {"score_buckets": False}, True,
        "every padded word slot multiplied (before length grouping)",
    ),
    "coco_teran_exact_bf16": Exact(
        "teran MrSw, bf16 matmul", "teran", {"score_dtype": "bfloat16"}, False,
        "score_dtype=bfloat16 (approximate)", torch.bfloat16,
    ),
    "coco_racg_exact": Exact("racg cross-graph, exact", "racg", {}, False, "8 heads; grouped by length"),
    "coco_racg_exact_padded": Exact(
        "racg cross-graph, padded", "racg", {"score_buckets": False}, True,
        "8 heads; padded (before length grouping)",
    ),
}  # fmt: skip


def _exact_case(e: Exact) -> Callable[[Sizes, torch.device], Case]:
    def build(sz: Sizes, device: torch.device) -> Case:
        pairs = sz.coco_img * sz.coco_cap  # one walk scores each pair once for both directions
        words = float(sz.words) if e.padded else _mean_words(sz)
        teran = e.method == "teran"
        flops = _alignment_flops(pairs, sz, words) if teran else _racg_flops(pairs, sz, words)
        return Case(
            e.scorer,
            _method(e.method, profile="paper", overrides=e.overrides or None),
            lambda: coco_features(sz, device, with_sets=True),
            pairs,
            flops,
            note=e.note,
            dtype=e.dtype,
            useful=teran_useful if teran else racg_useful,
        )

    return build


for _name, _exact in EXACT.items():
    register_case(_name)(_exact_case(_exact))


@register_case("coco_teran_once")
def _coco_teran_once(sz: Sizes, device: torch.device) -> Case:
    pairs = sz.coco_img * sz.coco_cap
    return Case(
        "teran MrSw, exact, one pass",
        _method("teran", profile="paper"),
        lambda: coco_features(sz, device, with_sets=True),
        pairs,
        _alignment_flops(pairs, sz, _mean_words(sz)),
        once=True,
        useful=teran_useful,
        note="matrix scored once, then evaluated (not the suite's path)",
    )


@register_case("coco_teran_rerank")
def _coco_teran_rerank(sz: Sizes, device: torch.device) -> Case:
    k = sz.rerank_k
    pairs = k * (sz.coco_img + sz.coco_cap)
    return Case(
        f"teran globals + MrSw top-{k}",
        _method("teran", profile="paper", global_aux_loss=True, rerank_k=k),
        lambda: coco_features(sz, device, with_sets=True),
        pairs,
        _alignment_flops(pairs, sz) + 2 * 2.0 * sz.coco_img * sz.coco_cap * sz.coco_dim,
        note=f"rerank_k={k} per query, both directions",
    )


# -- measurement ---------------------------------------------------------------------------------------


@dataclass
class Row(Outcome):
    case: str
    scorer: str = ""
    shape: str = ""
    pairs: int = 0
    seconds: float | None = None
    peak_mb: float | None = None
    features_mb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    useful_rate: float | None = None  # real-slot FLOP/s of the pairwise scorer
    matmul_rate: float | None = None  # a plain matmul's FLOP/s, same dtype and chunk shape, this run


PROBE = (128, 1024)  # captions x images of the timed slice behind a skipped case's estimate


class ShapeRate:
    """A plain [m, k] x [k, n] matmul in `dtype`, timed on demand (one timing of >= 50 ms), so that each of
    a case's timings has a matmul rate measured right beside it (the load of a shared machine varies)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, m: int, k: int, n: int) -> None:
        self.device, self.flops = device, 2.0 * m * k * n
        self.a = torch.randn(m, k, device=device).to(dtype)
        self.b = torch.randn(n, k, device=device).to(dtype)
        self.reps = 1
        self.reps = max(1, int(0.05 / max(self.seconds(), 1e-6)))

    def seconds(self) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(self.reps):
            self.a @ self.b.T
        sync(self.device)
        return (time.perf_counter() - t0) / self.reps

    def __call__(self) -> float:
        """FLOP/s now: the best of two timings."""
        return self.flops / min(self.seconds(), self.seconds())


def chunk_shape(sz: Sizes, n_img: int) -> tuple[int, int, int]:
    """The shape of one length group's chunk: ~20 captions of ~12 words x up to 4,096 images of 36 regions."""
    return 256, sz.coco_dim, min(n_img, 4096) * sz.regions


class Counted:
    """Wraps a method's `score` to add up the real-slot FLOPs and the pairs of every call (the masks'
    extents; the pairs as scored, so the table's count is measured, not assumed)."""

    def __init__(self, method: Any, useful: Callable[[Tensor, Tensor, int], float]) -> None:
        from fgbench.features import extents

        self.flops, self.pairs, self._score, self._useful, self._ext = 0.0, 0, method.score, useful, extents
        method.score = self

    def __call__(self, q: Any, g: Any) -> Tensor:
        self.flops += self._useful(self._ext(q.mask), self._ext(g.mask), q.tok.shape[-1])
        self.pairs += q.mask.shape[0] * g.mask.shape[0]
        return self._score(q, g)


def probe(case: Case, sz: Sizes, device: torch.device, ref: ShapeRate) -> tuple[float, float, float]:
    """(pairs/s, real FLOP/s, the matmul rate timed just before) of the case's `score` on a PROBE-sized slice
    at the case's shapes, best of 2."""
    from dataclasses import replace

    n_cap, n_img = min(PROBE[0], sz.coco_cap), min(PROBE[1], sz.coco_img)
    q, g, _ = coco_features(replace(sz, coco_cap=max(n_cap, n_img), coco_img=n_img), device, with_sets=True)
    q = q.slice(0, n_cap)
    method = case.method.to(device)
    assert case.useful is not None
    counted = Counted(method, case.useful)
    with torch.no_grad():
        method.score(q.slice(0, 8), g.slice(0, 8))  # warm-up
        seconds, rate = float("inf"), 0.0
        for _ in range(2):  # the best of two (a shared machine's load comes and goes), each beside a matmul
            now = ref()
            counted.flops = 0.0
            sync(device)
            t0 = time.perf_counter()
            method.score(q, g)
            sync(device)
            if time.perf_counter() - t0 < seconds:
                seconds, rate = time.perf_counter() - t0, now
    return n_cap * n_img / seconds, counted.flops / seconds, rate


def _features_mb(*feats: Any) -> float:
    return sum(t.numel() * t.element_size() for f in feats for t in f.tensors().values()) / 2**20


def score_once(method: Any, q: Any, g: Any, block: int = 1024) -> Tensor:
    """The whole [n_q, n_g] score matrix from the method's `score`, computed once in row blocks."""
    rows = [method.score(q.slice(i, i + block), g) for i in range(0, len(q), block)]
    return torch.cat(rows)


def run_case(name: str, sz: Sizes, device: torch.device, rate: float, max_s: float, repeats: int = 1) -> Row:
    row = Row(name)
    try:
        case = CASES[name](sz, device)
    except Exception as err:  # the method is not registered / not importable: a skipped row
        row.mark("skipped", err, 160)
        return row
    row.scorer, row.pairs, row.note = case.scorer, case.pairwise_pairs, case.note
    if case.useful is not None:
        ref = ShapeRate(device, case.dtype, *chunk_shape(sz, sz.coco_img))
        rate = row.matmul_rate = ref()
    estimate = case.flops / rate
    if estimate > max_s:
        row.status = "skipped"
        row.note = (
            f"estimated {estimate / 3600:.2f} h here at the matmul rate ({case.flops:.2e} FLOP at "
            f"{rate / 1e12:.3f} TFLOP/s)"
        )
        if case.useful is not None:
            pairs_s, row.useful_rate, row.matmul_rate = probe(case, sz, device, ref)
            row.note += (
                f"; {case.pairwise_pairs / pairs_s / 3600:.2f} h from a timed {PROBE[0]} x {PROBE[1]} slice"
            )
        row.note += "; raise --max-seconds or run on a GPU"
        return row
    t0 = time.perf_counter()
    q, g, spec = case.features()
    sync(device)
    log(f"[{name}] features built in {time.perf_counter() - t0:.1f} s")
    row.shape = f"{len(q)} x {len(g)}"
    row.features_mb = _features_mb(q, g)
    method = case.method.to(device)
    counted = None if case.useful is None else Counted(method, case.useful)
    peak = PeakMemory(device).start()
    for _ in range(repeats):  # the best of `repeats` (a shared machine's load comes and goes)
        now = None if case.useful is None else ref()  # the matmul rate right beside this timing
        if counted is not None:
            counted.flops, counted.pairs = 0.0, 0
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            if case.once:
                from fgbench.evaluation import evaluate

                scores = score_once(method, q, g)  # captions x images
                result = evaluate(scores.T, spec)  # rows images, as evaluate_features transposes
            else:
                result = method.evaluate_features(q, g, spec)
        sync(device)
        seconds = time.perf_counter() - t0
        if row.seconds is None or seconds < row.seconds:
            row.seconds = seconds
            if counted is not None:
                row.useful_rate, row.matmul_rate = counted.flops / seconds, now
                row.pairs = counted.pairs
    row.peak_mb = peak.stop()
    row.metrics = dict(result.metrics)
    return row


# -- table ---------------------------------------------------------------------------------------------


def display(rows: list[Row]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        m = r.metrics
        if "R1" in m:
            r1, extra = f"{m['R1']:.2f}", f"mAP {m['mAP']:.2f}"
        elif "i2t_R1" in m:
            r1, extra = f"{m['i2t_R1']:.2f} / {m['t2i_R1']:.2f}", f"rsum {m['rsum']:.1f}"
        else:
            r1, extra = "-", "-"
        rate = r.pairs / r.seconds / 1e6 if r.pairs and r.seconds else None
        out.append(
            {
                "case": r.case,
                "scorer": r.scorer or "-",
                "queries x gallery": r.shape or "-",
                "pairwise pairs": f"{r.pairs:,}" if r.pairs else "-",
                "seconds": fmt(r.seconds, ".2f"),
                "M pairs/s": fmt(rate, ".2f"),
                "peak MB": fmt(r.peak_mb, ".0f"),
                "features MB": fmt(r.features_mb, ".0f"),
                "useful GFLOP/s": fmt(None if r.useful_rate is None else r.useful_rate / 1e9, ".1f"),
                "matmul GFLOP/s": fmt(None if r.matmul_rate is None else r.matmul_rate / 1e9, ".1f"),
                "% of matmul": fmt(
                    None
                    if r.useful_rate is None or not r.matmul_rate
                    else 100 * r.useful_rate / r.matmul_rate,
                    ".0f",
                ),
                "R@1 (i2t / t2i)": r1,
                "mAP / rsum": extra,
                "note": r.note if r.status == "ok" else f"{r.status}: {r.note}",
            }
        )
    return out


RIGHT = {
    "pairwise pairs",
    "seconds",
    "M pairs/s",
    "peak MB",
    "features MB",
    "useful GFLOP/s",
    "matmul GFLOP/s",
    "% of matmul",
    "R@1 (i2t / t2i)",
    "mAP / rsum",
}


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__, SCRIPT, "tiny sizes (the fast test)", list(CASES))
    p.add_argument("--max-seconds", type=float, default=600.0, help="skip cases estimated to take longer")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case (the best is kept)")
    args = p.parse_args(argv)
    names = CASES.select(args.only, p)
    device = pick_device(args.device)
    sz = QUICK if args.quick else FULL
    # the alignment runs in fp32 (TERAN's scorer): its FLOPs are priced at the fp32 rate
    rate, rate_desc = fp32_rate(device, args.quick)
    header(device, f"fp32 matrix rate (for the skip estimates): {rate_desc}")
    print(f"sizes: {'quick' if args.quick else 'paper'} {sz}", flush=True)
    rows = []
    for name in names:
        log(f"[{name}] ...")
        try:
            row = run_case(name, sz, device, rate, args.max_seconds, args.repeats)
        except Exception as err:
            import traceback

            traceback.print_exc()
            row = Row(name)
            row.mark("failed", err)
        log(f"[{name}] {row.status}: {fmt(row.seconds, '.2f')} s {row.note}")
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    disp = display(rows)
    print()
    print(render(disp, RIGHT))
    print()
    for r in rows:
        if r.case.startswith("coco_teran") and r.status == "ok" and r.seconds is not None:
            met = r.seconds <= GOAL_PAIRWISE_S
            scale = "" if not args.quick else " (quick sizes, not the goal scale)"
            print(
                f"goal {r.case}: {r.seconds:.1f} s (goal <= {GOAL_PAIRWISE_S:.0f} s on one GPU): "
                f"{'MET' if met else 'NOT MET'}{scale}"
            )
    csv_rows = [
        {
            **{k.replace(" ", "_"): v for k, v in d.items()},
            "status": r.status,
            "seconds_raw": r.seconds,
            "metrics": r.metrics,
            "device": device_label(device),
            "quick": args.quick,
        }
        for r, d in zip(rows, disp, strict=True)
    ]
    return finish(args.out, csv_rows, [r.case for r in rows if r.status == "failed"])


def fp32_rate(device: torch.device, quick: bool) -> tuple[float, str]:
    """The fp32 matmul rate (TERAN scores in fp32); on a GPU with TF32 off, as PyTorch's default."""
    if device.type != "cuda":
        return matmul_rate(device, quick)
    n = 8192
    rate = time_matmul(n, torch.float32, device, reps=10, warmup=2)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    return rate, f"fp32 matmul {n}^3 (TF32 {'on' if tf32 else 'off'}): {rate / 1e12:.2f} TFLOP/s"


if __name__ == "__main__":
    sys.exit(main())
