"""Optimiser groups and schedules from config (fgbench.optim)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fgbench.optim import OptimConfig, build_optimizer, build_scheduler, param_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(4)


def lrs(model: nn.Module, cfg: OptimConfig) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight decay) of its group."""
    groups = param_groups(model, cfg)
    ids = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {n: ids[id(p)] for n, p in model.named_parameters() if id(p) in ids}


def test_prefix_multipliers_bias_multiplier_and_no_decay() -> None:
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, lr_mult={"head.": 5.0}, bias_lr_mult=2.0)
    got = lrs(Net(), cfg)
    assert got["body.weight"] == (1e-3, 0.1)
    assert got["body.bias"] == (2e-3, 0.0)  # bias: x2, no decay
    assert got["head.weight"] == (5e-3, 0.1) and got["head.bias"] == (5e-3, 0.0)  # a prefix wins
    assert got["norm.weight"] == (1e-3, 0.0)  # norms: no decay


def test_frozen_parameters_are_left_out() -> None:
    net = Net()
    net.body.requires_grad_(False)
    names = lrs(net, OptimConfig())
    assert "body.weight" not in names and "head.weight" in names


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizers_by_name(name: str) -> None:
    opt = build_optimizer(param_groups(Net(), OptimConfig(name=name)), OptimConfig(name=name))
    assert type(opt).__name__.lower() == name


def test_unknown_names_are_errors() -> None:
    with pytest.raises(KeyError, match="unknown optimizer 'lamb'"):
        build_optimizer(param_groups(Net(), OptimConfig()), OptimConfig(name="lamb"))
    opt = build_optimizer(param_groups(Net(), OptimConfig()), OptimConfig())
    with pytest.raises(KeyError, match="unknown schedule 'poly'"):
        build_scheduler(opt, OptimConfig(schedule="poly"), 10, 5)


def factors(cfg: OptimConfig, total: int, per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, total, per_epoch)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_linear_warmup() -> None:
    f = factors(OptimConfig(schedule="cosine", warmup_epochs=1, warmup_start=0.1), total=20, per_epoch=4)
    assert f[0] == pytest.approx(0.1) and f[2] == pytest.approx(0.1 + 0.9 * 2 / 4)
    assert f[4] == pytest.approx(1.0)  # warm-up over: the cosine starts at the full rate
    assert f[4 + 8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))


def test_step_decay() -> None:
    f = factors(OptimConfig(schedule="step", step_epochs=2, gamma=0.1), total=13, per_epoch=3)
    assert f[5] == pytest.approx(1.0) and f[6] == pytest.approx(0.1) and f[11] == pytest.approx(0.1)
    assert f[12] == pytest.approx(0.01)


def test_a_methods_lr_mult_comes_after_the_profiles() -> None:
    from fgbench.optim import OptimConfig

    cfg = OptimConfig(name="sgd", lr=1e-2)
    assert cfg.with_lr_mult({"cnn.": 0.1}) == OptimConfig(name="sgd", lr=1e-2, lr_mult={"cnn.": 0.1})
    given = OptimConfig(lr_mult={"cnn.": 0.5, "head.": 2.0})
    assert list(given.with_lr_mult({"cnn.": 0.1, "text.": 0.2}).lr_mult.items()) == [
        ("cnn.", 0.5), ("head.", 2.0), ("text.", 0.2)
    ]  # fmt: skip
    assert cfg.with_lr_mult({}) is cfg
