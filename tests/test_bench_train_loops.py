"""The training benchmark's bare loop runs what the Trainer runs: from the same weights and batches, its
steps (the method's own `training_step`, `configure_optimizers` schedule and `grad_clip_norm` clip) end at
the same weights as `lightning.Trainer.fit`'s."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
# the bare loop's `self.log` calls without a Trainer warn and return (what the loop wants)
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


@pytest.fixture(scope="module")
def loops() -> Iterator[tuple[ModuleType, ModuleType]]:
    sys.path.insert(0, str(BENCH))
    try:
        import _train_cases
        import _train_loops
    finally:
        sys.path.remove(str(BENCH))
    yield _train_cases, _train_loops


@pytest.mark.parametrize("name", ["teran", "clip_ft"])  # TERAN: clipped at 2.0, its own warm-up schedule
def test_bare_loop_ends_where_the_trainer_ends(loops: tuple[ModuleType, ModuleType], name: str) -> None:
    cases, train_loops = loops
    cpu = torch.device("cpu")
    case = cases.CASES[name](cases.Ctx(quick=True, device=cpu, batch_size=None, ckpt=None))
    ends = []
    for suite in (True, False):
        model = case.new_model()
        for m in model.modules():  # no dropout: the Trainer's loader draws from the RNG before step 1
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            elif isinstance(m, torch.nn.MultiheadAttention):
                m.dropout = 0.0
        batches = [case.make_batch(model, seed) for seed in range(2)]
        if suite:
            train_loops.run_suite(model, case.dm, batches, 2, 2, cpu, False, "off")
        else:
            train_loops.run_bare(model, batches, 2, 2, cpu, False)
        ends.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    if name == "teran":
        assert model.grad_clip_norm == 2.0
    assert ends[0].keys() == ends[1].keys()
    for k, v in ends[0].items():
        torch.testing.assert_close(ends[1][k], v, rtol=1e-5, atol=1e-6, msg=k)
    start = case.new_model().state_dict()
    moved = sum(not torch.equal(start[k], v) for k, v in ends[0].items())
    assert moved > 0  # the steps did train
