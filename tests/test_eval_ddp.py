"""Under a 2-process CPU DDP (gloo), gathering + evaluation equals the single-process numbers exactly.

Each rank holds the DistributedSampler share of the query and gallery features (padded, so one item is
duplicated: 37 queries, 23 gallery items over 2 ranks); `gather_by_index` drops the duplicates and the
evaluator splits its query blocks across ranks.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data.distributed import DistributedSampler

from fgbench.evaluation import EvalSpec, FunctionSource, evaluate
from fgbench.evaluation.distributed import gather_by_index

NQ, NG, DIM = 37, 23, 8


def make_data() -> tuple[torch.Tensor, torch.Tensor, EvalSpec]:
    g = torch.Generator().manual_seed(0)
    qf = torch.randn(NQ, DIM, generator=g).round()  # rounded: frequent ties
    gf = torch.randn(NG, DIM, generator=g).round()
    gl = torch.randint(0, 7, (NG,), generator=g)
    ql = gl[torch.randint(0, NG, (NQ,), generator=g)]
    return qf, gf, EvalSpec("person_t2i", ql, gl)


def run_eval(qf: torch.Tensor, gf: torch.Tensor, spec: EvalSpec) -> dict:
    src = FunctionSource(lambda r, c: qf[r] @ gf[c].T, NQ, NG, col_block=5)
    res = evaluate(src, spec, block_rows=4)
    assert res.outcomes is not None  # the per-query outcomes too: every rank holds the summed statistics
    d = res.outcomes.directions["t2i"]
    per_query = {"first": d.first.tolist(), **{k: v.tolist() for k, v in d.stats.items()}}
    return {**res.metrics, "n_tied": res.details["n_tied"], "outcomes": per_query}


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        qf, gf, spec = make_data()
        qi = torch.tensor(list(DistributedSampler(range(NQ), 2, rank, shuffle=False)))
        gi = torch.tensor(list(DistributedSampler(range(NG), 2, rank, shuffle=False)))
        q_all = gather_by_index(qi, {"f": qf[qi]}, NQ)["f"]
        g_all = gather_by_index(gi, {"f": gf[gi]}, NG)["f"]
        metrics = run_eval(q_all, g_all, spec)
        Path(f"{out}.{rank}").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_single_process(tmp_path: Path) -> None:
    single = run_eval(*make_data())
    out = str(tmp_path / "metrics")
    mp.start_processes(worker, args=(free_port(), out), nprocs=2, start_method="spawn")
    for rank in range(2):
        assert json.loads(Path(f"{out}.{rank}").read_text()) == single


def test_gather_by_index_rejects_incomplete_features() -> None:
    import pytest

    with pytest.raises(ValueError, match="gathered 3 distinct items, expected 4; missing indices \\[2\\]"):
        gather_by_index(torch.tensor([0, 1, 3, 3]), {"f": torch.zeros(4, 2)}, 4)
