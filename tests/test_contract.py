"""The contract every registered method and datamodule meets, walked from the registries: a method is tested
by being registered (docs/methods.md §0, docs/plugins.md).

Each method is paired with every tiny datamodule (a registered datamodule that generates its data at a given
`sizes`) whose tasks it declares, and goes through tests/method_checks.py: one training batch forwards and
backwards (when it `trains`), the shared scoring checks, its evaluation equals the evaluator on the
brute-force score matrix, and a checkpoint round trip scores the same. What a class declares decides what
applies: `tasks` picks the data, `trains` the training check; a class that cannot be built without
constructor arguments (the ensemble, built from trained runs: tests/test_ensemble.py) is skipped, saying so.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from method_checks import (
    assert_checkpoint_round_trip,
    assert_evaluation_is_the_dense_ranking,
    assert_trains,
    attach,
    first_batch,
    shared_checks,
)

from fgbench.data.module import RetrievalDataModule
from fgbench.evaluation import get_protocol
from fgbench.method import RetrievalMethod
from fgbench.registry import DATAMODULES, METHODS

TASKS = {"text-image", "image-text", "composed"}


def required_arguments(cls: type) -> list[str]:
    """Constructor parameters without a default (what a contract test cannot invent)."""
    return [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def tiny_datamodules() -> list[str]:
    """Registered datamodules that generate their own data at a given size (a `sizes` argument)."""

    def sized(cls: type) -> bool:
        inits = (k.__init__ for k in cls.__mro__ if "__init__" in vars(k))
        return any("sizes" in inspect.signature(init).parameters for init in inits)

    return [n for n in DATAMODULES.list() if sized(DATAMODULES.get(n))]


def pairs() -> list[Any]:
    """(method, tiny datamodule) for every shared task; a method that cannot be built is one skipped case."""
    out = []
    for m in METHODS.list():
        cls = METHODS.get(m)
        if required_arguments(cls):
            why = f"{m} needs constructor arguments {required_arguments(cls)}"
            out.append(pytest.param(m, None, id=m, marks=pytest.mark.skip(reason=why)))
            continue
        out += [
            pytest.param(m, d, id=f"{m}@{d}")
            for d in tiny_datamodules()
            if cls.tasks & DATAMODULES.get(d).tasks
        ]
    return out


@pytest.mark.parametrize("name", METHODS.list())
def test_registered_method_declares_what_the_suite_reads(name: str) -> None:
    cls = METHODS.get(name)
    assert issubclass(cls, RetrievalMethod) and cls.name == name
    assert cls.tasks and cls.tasks <= TASKS and isinstance(cls.trains, bool)
    assert isinstance(cls.provenance, str)


@pytest.mark.parametrize("name", DATAMODULES.list())
def test_registered_datamodule_declares_what_the_suite_reads(name: str) -> None:
    cls = DATAMODULES.get(name)
    assert issubclass(cls, RetrievalDataModule) and cls.name == name
    assert cls.tasks and cls.tasks <= TASKS


@pytest.mark.parametrize("name", tiny_datamodules())
def test_tiny_datamodule_serves_training_batches_and_a_test_split_its_spec_describes(
    tiny_dm: Callable[..., Any], name: str
) -> None:
    dm = tiny_dm(name)
    assert next(iter(dm.train_dataloader())) is not None
    spec = dm.evaluation_set(dm.test_split).spec
    q_loader, g_loader = dm.test_dataloader()
    n_q, n_g = len(q_loader.dataset), len(g_loader.dataset)
    if get_protocol(spec.protocol).rows_are_images:  # the spec is written in the protocol's orientation
        n_q, n_g = n_g, n_q
    assert len(spec.gallery_labels) == n_g and (spec.query_labels is None or len(spec.query_labels) == n_q)


@pytest.mark.parametrize(("method", "data"), pairs())
def test_method_meets_the_contract_on_tiny_data(
    tiny_dm: Callable[..., Any], tmp_path: Path, method: str, data: str
) -> None:
    dm = tiny_dm(data)
    L.seed_everything(0, verbose=False)
    model = attach(METHODS.get(method)(), dm)
    modules = {name: id(m) for name, m in model.named_modules()}
    model.build(dm.info())  # a second build (fit, then test) keeps the modules the weights live in
    assert {name: id(m) for name, m in model.named_modules()} == modules
    if model.trains:
        assert_trains(model, first_batch(dm))
    q, g = shared_checks(model, dm)
    assert_evaluation_is_the_dense_ranking(model, q, g, dm.evaluation_set(dm.test_split).spec)
    assert_checkpoint_round_trip(model, dm, tmp_path / "weights.pt")
