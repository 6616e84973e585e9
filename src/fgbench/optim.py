"""Optimisers and schedules from config, with per-group learning rates (registries, no if/elif chains).

Parameter groups: `lr_mult` maps a parameter-name prefix to a learning-rate multiplier (first match wins,
e.g. {"refs": 5.0, "text.": 1.0}); names matching `no_decay` substrings (biases, norms, learnable
references) get no weight decay. Schedules step per optimiser step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


@dataclass
class OptimConfig:
    """Optimiser and schedule of a method; every field has a default."""

    name: str = "adamw"  # key of OPTIMIZERS
    lr: float = 1e-3  # base learning rate
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW only
    eps: float = 1e-8  # Adam/AdamW only
    momentum: float = 0.9  # SGD only
    lr_mult: dict[str, float] = field(default_factory=dict)  # name prefix -> lr multiplier
    bias_lr_mult: float = 1.0  # lr multiplier of biases no prefix matches (IRRA: 2)
    no_decay: tuple[str, ...] = ("bias", "norm", "ln_", "bn")  # name substrings without weight decay
    schedule: str = "cosine"  # key of SCHEDULES
    warmup_epochs: float = 0.0  # linear warm-up length
    warmup_start: float = 0.1  # warm-up starts at this fraction of the lr
    step_epochs: int = 20  # "step": decay period
    gamma: float = 0.1  # "step": decay factor

    def with_lr_mult(self, mult: dict[str, float]) -> OptimConfig:
        """This config with the method's own `lr_mult` prefixes (e.g. a backbone's multiplier from a flat
        method field) after those the profile names, which win (the first matching prefix counts)."""
        extra = {prefix: m for prefix, m in mult.items() if prefix not in self.lr_mult}
        return replace(self, lr_mult={**self.lr_mult, **extra}) if extra else self


# checkpoints keep OptimConfig in their hyper-parameters: allow it under torch.load(weights_only=True)
torch.serialization.add_safe_globals([OptimConfig])


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Group trainable parameters by (lr multiplier, decay or not)."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        default = cfg.bias_lr_mult if name.endswith("bias") else 1.0
        mult = next((m for prefix, m in cfg.lr_mult.items() if name.startswith(prefix)), default)
        decay = p.ndim > 1 and not any(s in name.lower() for s in cfg.no_decay)
        groups.setdefault((mult, decay), []).append(p)
    return [
        {"params": ps, "lr": cfg.lr * mult, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (mult, decay), ps in groups.items()
    ]


def build_optimizer(params: Iterable[dict], cfg: OptimConfig) -> Optimizer:
    if cfg.name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {cfg.name!r}; known: {sorted(OPTIMIZERS)}")
    extra = {"momentum": cfg.momentum} if cfg.name == "sgd" else {"betas": cfg.betas, "eps": cfg.eps}
    return OPTIMIZERS[cfg.name](list(params), lr=cfg.lr, **extra)


def _warm(step: int, warm: int, start: float) -> float:
    return start + (1.0 - start) * step / max(1, warm)


def _cosine(cfg: OptimConfig, total: int, per_epoch: int) -> Callable[[int], float]:
    warm = int(cfg.warmup_epochs * per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return _warm(step, warm, cfg.warmup_start)
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _step(cfg: OptimConfig, total: int, per_epoch: int) -> Callable[[int], float]:
    warm = int(cfg.warmup_epochs * per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return _warm(step, warm, cfg.warmup_start)
        return cfg.gamma ** (step // max(1, cfg.step_epochs * per_epoch))

    return f


def _constant(cfg: OptimConfig, total: int, per_epoch: int) -> Callable[[int], float]:
    warm = int(cfg.warmup_epochs * per_epoch)
    return lambda step: _warm(step, warm, cfg.warmup_start) if step < warm else 1.0


SCHEDULES: dict[str, Callable[[OptimConfig, int, int], Callable[[int], float]]] = {
    "cosine": _cosine,
    "step": _step,
    "constant": _constant,
}


def build_scheduler(opt: Optimizer, cfg: OptimConfig, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    if cfg.schedule not in SCHEDULES:
        raise KeyError(f"unknown schedule {cfg.schedule!r}; known: {sorted(SCHEDULES)}")
    return LambdaLR(opt, SCHEDULES[cfg.schedule](cfg, total_steps, max(1, steps_per_epoch)))
