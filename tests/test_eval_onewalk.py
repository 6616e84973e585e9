"""The one-walk image-text evaluation (both directions from one pass over the pairs) equals the two-walk one.

Scores are integers (rounded features), exact in float32 whatever the call shape and full of ties, so the
two paths must agree bit for bit: every metric, every per-query statistic, the tie counts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fgbench.evaluation import EvalSpec, FunctionSource, MatrixSource, ScoreSource, evaluate
from fgbench.evaluation.engine import Direction, Options, direction_stats
from fgbench.evaluation.onewalk import PRE_ROWS, itm_stats

N_IMG, CAPS, DIM, REGIONS, WORDS = 20, 5, 6, 3, 4


def data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(N_IMG, REGIONS, DIM, generator=g).mul(0.7).round()
    cap = torch.randn(N_IMG * CAPS, WORDS, DIM, generator=g).mul(0.7).round()
    img_labels = torch.randperm(N_IMG, generator=g) + 100  # distinct, not 0..n-1
    cap_labels = img_labels.repeat_interleave(CAPS)[torch.randperm(N_IMG * CAPS, generator=g)]
    return {"img": img, "cap": cap, "img_labels": img_labels, "cap_labels": cap_labels}


def global_fn(d: dict[str, torch.Tensor]):
    gi, gc = d["img"].sum(1), d["cap"].sum(1)
    return lambda r, c: gi[r] @ gc[c].T


def global_pairs(d: dict[str, torch.Tensor]):
    gi, gc = d["img"].sum(1), d["cap"].sum(1)
    return lambda r, c: (gi[r.flatten()] * gc[c.flatten()]).sum(-1).view(r.shape)


def pairwise_fn(d: dict[str, torch.Tensor]):
    """Sum over words of the best region: a TERAN-like alignment score (integer-valued here)."""
    img, cap = d["img"], d["cap"]
    return lambda r, c: torch.einsum("ard,bwd->abrw", img[r], cap[c]).amax(2).sum(-1)


def pairwise_pairs(d: dict[str, torch.Tensor]):
    """The alignment score of aligned (image, caption) index pairs: the re-rank interface."""
    img, cap = d["img"], d["cap"]
    return lambda r, c: (
        torch.einsum("prd,pwd->prw", img[r.flatten()], cap[c.flatten()]).amax(1).sum(-1).view(r.shape)
    )


def make_source(d: dict[str, torch.Tensor], scorer: str, layout: str, rerank: bool) -> ScoreSource:
    """rows = images, columns = captions; `captions_first` builds it as methods do: (captions x images).T."""
    fn = global_fn(d) if scorer == "global" else pairwise_fn(d)
    # re-rank: the global score's shortlist re-scored by the alignment (the shortlist path of a method)
    pair = pairwise_pairs(d) if rerank or scorer == "pairwise" else global_pairs(d)
    n_cap = d["cap"].shape[0]
    if layout == "matrix":
        return MatrixSource(fn(torch.arange(N_IMG), torch.arange(n_cap)), pair_fn=pair)
    if layout == "function":
        return FunctionSource(fn, N_IMG, n_cap, col_block=17, pair_fn=pair)
    return FunctionSource(
        lambda r, c: fn(c, r).T, n_cap, N_IMG, col_block=6, pair_fn=lambda r, c: pair(c, r)
    ).T


def specs(d: dict[str, torch.Tensor]) -> dict[str, EvalSpec]:
    return {p: EvalSpec(p, d["img_labels"], d["cap_labels"]) for p in ("f30k_1k", "coco_5k", "coco_1k_5fold")}


@pytest.mark.parametrize("protocol", ["f30k_1k", "coco_5k", "coco_1k_5fold"])
@pytest.mark.parametrize("scorer", ["global", "pairwise"])
@pytest.mark.parametrize("layout", ["matrix", "function", "captions_first"])
def test_one_walk_equals_two_walks(protocol: str, scorer: str, layout: str) -> None:
    d = data()
    spec = specs(d)[protocol]
    for rerank_k in (None, 1, 3, 10, 50):
        src = make_source(d, scorer, layout, rerank=rerank_k is not None)
        for block_rows, max_elems in ((256, 1 << 25), (1, 1 << 25), (3, 1 << 25), (7, 40), (64, 150)):
            kw = dict(rerank_k=rerank_k, block_rows=block_rows, max_elems=max_elems)
            one = evaluate(src, spec, one_walk=True, **kw)
            two = evaluate(src, spec, one_walk=False, **kw)
            assert one.metrics == two.metrics, (rerank_k, block_rows, max_elems)
            assert one.details == two.details, (rerank_k, block_rows, max_elems)


@pytest.mark.parametrize("rerank_k", [None, 4])
@pytest.mark.parametrize("block_rows", [1, 5, 64])
def test_per_query_statistics_and_ties_match(rerank_k: int | None, block_rows: int) -> None:
    """Every per-query statistic (first, last, n_pos, ap, tied) of both directions, on a tie-heavy matrix."""
    d = data(1)
    src = make_source(d, "global", "function", rerank=rerank_k is not None)
    opts = Options(block_rows=block_rows, rerank_k=rerank_k)
    i2t, t2i = itm_stats(src, d["img_labels"], d["cap_labels"], opts)
    ref_i2t = direction_stats(Direction(src, d["img_labels"], d["cap_labels"], name="i2t"), opts)
    ref_t2i = direction_stats(Direction(src.T, d["cap_labels"], d["img_labels"], name="t2i"), opts)
    assert int(ref_t2i["tied"].sum()) > 0  # the fixture does exercise ties
    for got, ref in ((i2t, ref_i2t), (t2i, ref_t2i)):
        assert got.keys() == ref.keys()
        for key in ref:
            assert got[key].dtype == ref[key].dtype and torch.equal(got[key], ref[key]), key


class Counting:
    """A block scorer that counts the pairs it scores."""

    def __init__(self, fn) -> None:
        self.fn, self.pairs = fn, 0

    def __call__(self, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.pairs += r.numel() * c.numel()
        return self.fn(r, c)


def test_one_walk_scores_each_pair_once_plus_a_small_pre_pass() -> None:
    d = data()
    n_cap = d["cap"].shape[0]
    spec = specs(d)["f30k_1k"]
    pairs = {}
    for one_walk in (True, False):
        fn = Counting(pairwise_fn(d))
        evaluate(FunctionSource(fn, N_IMG, n_cap, col_block=17), spec, one_walk=one_walk, block_rows=8)
        pairs[one_walk] = fn.pairs
    assert pairs[False] == 2 * N_IMG * n_cap
    assert N_IMG * n_cap < pairs[True] <= N_IMG * n_cap + PRE_ROWS * n_cap


def test_last_bit_differences_between_calls_are_settled_against_the_walks_own_scores() -> None:
    """A scorer whose value for a pair moves by a few ulp with the call's size (as matrix-multiply kernels
    may): the pre-pass estimate differs from the walk's value, yet the one walk ranks t2i exactly on the
    matrix the walk computed, i.e. equals the two-walk evaluation of that very matrix."""
    d = data()
    base = global_fn(d)

    def fn(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # integer scores + a call-size offset
        return base(r, c) + 1e-6 * (r.numel() % 5)

    n_cap = d["cap"].shape[0]
    # the walk's blocks: 3 or 8 rows (a shorter last one); the folds' 4 images in blocks that also tile the
    # whole matrix (2, 4), so that `walked` is the matrix each fold's walk sees. The pre-pass takes 16 rows.
    cases = [(p, b) for p in ("f30k_1k", "coco_5k") for b in (3, 8)] + [("coco_1k_5fold", b) for b in (2, 4)]
    for protocol, block_rows in cases:
        src = FunctionSource(fn, N_IMG, n_cap, col_block=17, pair_fn=global_pairs(d))
        walked = torch.cat(
            [src.scores(torch.arange(s, min(N_IMG, s + block_rows))) for s in range(0, N_IMG, block_rows)]
        )
        v_pre = src.scores(torch.arange(16), torch.arange(n_cap))
        assert not torch.equal(walked[:16], v_pre)  # the calls do disagree
        for rerank_k in (None, 4):
            kw = dict(rerank_k=rerank_k, block_rows=block_rows)
            one = evaluate(src, specs(d)[protocol], **kw)
            ref = evaluate(
                MatrixSource(walked, pair_fn=global_pairs(d)), specs(d)[protocol], one_walk=False, **kw
            )
            assert one.metrics == ref.metrics and one.details == ref.details, (protocol, block_rows, rerank_k)


def test_shape_dependent_scorer_falls_back_to_a_second_walk(caplog: pytest.LogCaptureFixture) -> None:
    """A scorer whose values depend on the call beyond rounding cannot be settled from the pre-pass: t2i is
    then ranked by the transposed walk, with a warning, and equals the two-walk path."""
    d = data()
    base = global_fn(d)
    src = FunctionSource(lambda r, c: base(r, c) + 0.1 * r.numel(), N_IMG, d["cap"].shape[0])
    spec = specs(d)["f30k_1k"]
    with caplog.at_level(logging.WARNING, logger="fgbench.evaluation.onewalk"):
        one = evaluate(src, spec, block_rows=8)
    assert "ranking t2i by a second walk" in caplog.text
    assert one.metrics == evaluate(src, spec, one_walk=False, block_rows=8).metrics


def test_caption_without_image_gives_the_two_walk_error() -> None:
    d = data()
    d["cap_labels"][3] = 7  # no image has label 7
    spec = specs(d)["f30k_1k"]
    src = make_source(d, "global", "function", rerank=False)
    msgs = []
    for one_walk in (True, False):
        with pytest.raises(ValueError) as e:
            evaluate(src, spec, one_walk=one_walk)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "t2i: 1 queries have no relevant gallery item" in msgs[0]


def test_matrix_source_transpose_keeps_its_pair_scorer() -> None:
    m = torch.arange(6.0).view(2, 3)
    src = MatrixSource(m, pair_fn=lambda r, c: 10.0 * r + c)
    assert torch.equal(src.T.pair_scores(torch.tensor([[2]]), torch.tensor([[1]])), torch.tensor([[12.0]]))
    assert torch.equal(MatrixSource(m).T.pair_scores(torch.tensor([[2]]), torch.tensor([[1]])), m[1:, 2:])


# -- DDP: row blocks split over two gloo processes, counts summed, running top-k gathered and merged -----


def ddp_eval(rerank_k: int | None) -> dict:
    d = data(2)
    src = make_source(d, "pairwise", "captions_first", rerank=rerank_k is not None)
    res = evaluate(src, specs(d)["coco_1k_5fold"], rerank_k=rerank_k, block_rows=3)
    return {**res.metrics, "i2t_n_tied": res.details["i2t_n_tied"], "t2i_n_tied": res.details["t2i_n_tied"]}


def ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        Path(f"{out}.{rank}").write_text(json.dumps([ddp_eval(None), ddp_eval(2)]))
    finally:
        dist.destroy_process_group()


def test_one_walk_under_two_process_gloo_equals_single_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "metrics")
    mp.start_processes(ddp_worker, args=(port, out), nprocs=2, start_method="spawn")
    single = json.loads(json.dumps([ddp_eval(None), ddp_eval(2)]))
    for rank in range(2):
        assert json.loads(Path(f"{out}.{rank}").read_text()) == single
