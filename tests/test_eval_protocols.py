"""Every protocol equals the brute-force docs/protocols.md definitions on random inputs, for any block size.

Scores are drawn from a small integer range so that ties are frequent: the tie rule (stable order by
gallery index) is exercised, not just assumed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fgbench.evaluation import EvalSpec, FunctionSource, MatrixSource, evaluate

import eval_reference as ref

SEEDS = range(6)
# (block_rows, max_elems): one query per block and tiny comparison chunks, mid-size, and everything at once
CHUNKINGS = [(1, 1), (3, 64), (10_000, 1 << 30)]


def tied_scores(rng: np.random.Generator, q: int, g: int, levels: int = 7) -> np.ndarray:
    return rng.integers(0, levels, size=(q, g)).astype(np.float32)


def assert_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(want) <= set(got), f"missing metrics {set(want) - set(got)}"
    for key, v in want.items():
        assert got[key] == pytest.approx(v, rel=1e-9, abs=1e-9), key


def as_function(S: np.ndarray, col_block: int) -> FunctionSource:
    M = torch.from_numpy(S)
    return FunctionSource(lambda r, c: M[r][:, c], S.shape[0], S.shape[1], col_block=col_block)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_person_t2i(seed: int, chunk: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    gl = rng.integers(0, 6, size=23)
    ql = rng.choice(gl, size=31)
    S = tied_scores(rng, 31, 23)
    want = ref.person(S, ql, gl)
    spec = EvalSpec("person_t2i", torch.from_numpy(ql), torch.from_numpy(gl))
    for scores in (torch.from_numpy(S), as_function(S, col_block=5)):
        got = evaluate(scores, spec, block_rows=chunk[0], max_elems=chunk[1]).metrics
        assert_metrics(got, want)


@pytest.mark.parametrize("seed", SEEDS)
def test_person_t2i_rerank(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gl = rng.integers(0, 5, size=19)
    ql = rng.choice(gl, size=17)
    S = tied_scores(rng, 17, 19)
    R = tied_scores(rng, 17, 19, levels=4)  # re-scores, with ties of their own
    src = MatrixSource(torch.from_numpy(S), pair_fn=lambda r, c: torch.from_numpy(R)[r, c])
    spec = EvalSpec("person_t2i", torch.from_numpy(ql), torch.from_numpy(gl))
    for k in (1, 4, 19):
        for block in (1, 5, 100):
            got = evaluate(src, spec, rerank_k=k, block_rows=block).metrics
            assert_metrics(got, ref.person(S, ql, gl, R=R, k=k))


def test_rerank_with_the_same_scorer_is_the_plain_ranking() -> None:
    rng = np.random.default_rng(0)
    gl = rng.integers(0, 5, size=30)
    ql = rng.choice(gl, size=20)
    S = torch.from_numpy(tied_scores(rng, 20, 30))
    spec = EvalSpec("person_t2i", torch.from_numpy(ql), torch.from_numpy(gl))
    plain = evaluate(S, spec).metrics
    for k in (1, 7, 30):
        assert evaluate(MatrixSource(S), spec, rerank_k=k).metrics == plain


@pytest.mark.parametrize("seed", SEEDS)
def test_class_reed(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_cls = 6
    gl = rng.integers(0, n_cls, size=130)
    ql = np.arange(n_cls)
    S = tied_scores(rng, n_cls, 130, levels=5)
    spec = EvalSpec("class_reed", torch.from_numpy(ql), torch.from_numpy(gl))
    for chunk in CHUNKINGS:
        got = evaluate(torch.from_numpy(S), spec, block_rows=chunk[0], max_elems=chunk[1]).metrics
        assert_metrics(got, ref.class_reed(S, ql, gl))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("protocol", ["f30k_1k", "coco_5k"])
def test_image_text_single(seed: int, protocol: str) -> None:
    rng = np.random.default_rng(seed)
    n_img = 9
    img = np.arange(n_img)
    cap = np.repeat(img, 5)
    cap[rng.integers(0, cap.size)] = 0  # an image with 6 captions, one with 4 ('all' caption policy)
    S = tied_scores(rng, n_img, cap.size)
    spec = EvalSpec(protocol, torch.from_numpy(img), torch.from_numpy(cap))
    for chunk in CHUNKINGS:
        got = evaluate(torch.from_numpy(S), spec, block_rows=chunk[0], max_elems=chunk[1]).metrics
        assert_metrics(got, ref.itm(S, img, cap))


@pytest.mark.parametrize("seed", SEEDS)
def test_coco_1k_5fold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = np.arange(20)
    cap = np.repeat(img, 5)
    S = tied_scores(rng, 20, 100)
    spec = EvalSpec("coco_1k_5fold", torch.from_numpy(img), torch.from_numpy(cap))
    for chunk in CHUNKINGS:
        res = evaluate(torch.from_numpy(S), spec, block_rows=chunk[0], max_elems=chunk[1])
        assert_metrics(res.metrics, ref.coco_5fold(S, img, cap))
        folds = res.details["folds"]
        assert len(folds) == 5
        assert res.metrics["rsum"] == pytest.approx(np.mean([f["rsum"] for f in folds]))


def test_coco_folds_are_sequential_not_shuffled() -> None:
    """Fold 0 is images 0..size-1: a matrix perfect on fold 0 only gives that fold 600."""
    img = np.arange(10)
    cap = np.repeat(img, 5)
    S = np.zeros((10, 50), dtype=np.float32)
    for i in range(2):
        S[i, cap == i] = 1.0
    res = evaluate(
        torch.from_numpy(S), EvalSpec("coco_1k_5fold", torch.from_numpy(img), torch.from_numpy(cap))
    )
    assert res.details["folds"][0]["rsum"] == 600.0
    assert all(f["rsum"] < 600.0 for f in res.details["folds"][1:])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("protocol", ["fiq_a", "fiq_b"])
def test_fashioniq_groups(seed: int, protocol: str) -> None:
    rng = np.random.default_rng(seed)
    cats = {"dress": (12, 60), "shirt": (9, 55), "toptee": (7, 70)}
    S = tied_scores(rng, sum(q for q, _ in cats.values()), sum(g for _, g in cats.values()))
    spec, parts = ref.fashioniq_case(rng, cats, protocol)
    ql, gl = spec.query_labels.numpy(), np.arange(S.shape[1])
    want = {}
    for name, (qi, gi) in parts.items():
        g0 = gi[0]
        exl = None if spec.exclude is None else spec.exclude.numpy()[qi] - g0
        r = ref.recall_at(S[np.ix_(qi, gi)], ql[qi] - g0, gl[gi] - g0, (10, 50), exl)
        want.update({f"{name}_R10": r["R10"], f"{name}_R50": r["R50"]})
    want["avg_R10"] = np.mean([want[f"{n}_R10"] for n in cats])
    want["avg_R50"] = np.mean([want[f"{n}_R50"] for n in cats])
    want["avg"] = (want["avg_R10"] + want["avg_R50"]) / 2
    for chunk in CHUNKINGS:
        assert_metrics(
            evaluate(torch.from_numpy(S), spec, block_rows=chunk[0], max_elems=chunk[1]).metrics, want
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_cirr(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, ng = 25, 70
    S = tied_scores(rng, nq, ng)
    sub = np.stack([rng.choice(ng, size=6, replace=False) for _ in range(nq)])
    ex = sub[:, 0].copy()  # reference = first member
    ql = sub[np.arange(nq), rng.integers(1, 6, size=nq)]  # target = another member
    gl = np.arange(ng)
    spec = EvalSpec(
        "cirr",
        torch.from_numpy(ql),
        torch.from_numpy(gl),
        exclude=torch.from_numpy(ex),
        subsets=torch.from_numpy(sub),
    )
    for chunk in CHUNKINGS:
        got = evaluate(torch.from_numpy(S), spec, block_rows=chunk[0], max_elems=chunk[1]).metrics
        assert_metrics(got, ref.cirr(S, ql, gl, ex, sub))


@pytest.mark.parametrize("seed", SEEDS)
def test_f200k_caption_level_hits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    nq, ng = 30, 150
    gl = rng.integers(0, 40, size=ng)  # caption ids: many images share a caption
    ex = rng.integers(0, ng, size=nq)
    tgt = np.array([rng.choice([g for g in range(ng) if g != e]) for e in ex])
    ql = gl[tgt]
    S = tied_scores(rng, nq, ng)
    spec = EvalSpec("f200k", torch.from_numpy(ql), torch.from_numpy(gl), exclude=torch.from_numpy(ex))
    want = ref.recall_at(S, ql, gl, (1, 5, 10, 50, 100), ex)
    for chunk in CHUNKINGS:
        assert_metrics(
            evaluate(torch.from_numpy(S), spec, block_rows=chunk[0], max_elems=chunk[1]).metrics, want
        )


def test_collapsed_model_gets_near_zero_recall_and_reports_ties() -> None:
    """Constant scores: ranks follow gallery order, not a perfect R@K; n_tied flags it (protocols.md §0)."""
    n = 50
    S = torch.zeros(n, n)
    res = evaluate(S, EvalSpec("person_t2i", torch.arange(n), torch.arange(n)))
    assert res.metrics["R1"] == pytest.approx(100.0 / n)
    assert res.details["n_tied"] == n


def test_metrics_are_percent_and_unrounded() -> None:
    S = torch.eye(3)[[0, 1, 2]]
    S[2] = torch.tensor([1.0, 0.5, 0.0])
    res = evaluate(S, EvalSpec("person_t2i", torch.arange(3), torch.arange(3)))
    assert res.metrics["R1"] == pytest.approx(200.0 / 3)  # 66.666..., not 66.67


def test_protocol_registry_describes_each_protocol_once() -> None:
    from fgbench.evaluation import PROTOCOLS, get_protocol

    assert {n for n, p in PROTOCOLS.items() if p.rows_are_images} == {"f30k_1k", "coco_5k", "coco_1k_5fold"}
    assert {n for n, p in PROTOCOLS.items() if p.pooled_queries} == {"class_reed"}
    assert {n for n, p in PROTOCOLS.items() if p.submission is not None} == {"cirr"}
    assert all(p.name == n and p.headline for n, p in PROTOCOLS.items())
    assert all(p.metric_values is not None for p in PROTOCOLS.values())  # every one has per-query outcomes
    with pytest.raises(KeyError, match="unknown protocol 'nope'; known: cirr, class_reed"):
        get_protocol("nope")
