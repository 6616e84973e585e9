"""The two timed loops of the training benchmark (`train_throughput.py`), both running the method's own
training step, optimiser, schedule and gradient clipping:

- **suite** (`run_suite`): `lightning.Trainer.fit` as the train CLI runs it (same precision; no
  `gradient_clip_val`, so the method's `configure_gradient_clipping` clips by its `grad_clip_norm`), with
  logger, progress bar and checkpointing off, fed ready batches already on the device, timed by a callback
  over the steady-state steps;
- **bare** (`run_bare`): the same LightningModule in a plain loop with nothing of Lightning's around it:
  `training_step` (detached from any Trainer, so its `self.log` calls return at once) under the same
  autocast, `backward`, `torch.nn.utils.clip_grad_norm_` at `grad_clip_norm` over the optimiser's parameters
  (what Lightning's precision plugin calls), `optimizer.step`, `scheduler.step`, with the optimiser and
  schedule of the method's `configure_optimizers`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from _bench import PeakMemory, sync
from _sync_probe import SyncProbe, cuda_sync_debug

# `self.log` without a Trainer warns and returns: the bare loop's logging is that no-op
warnings.filterwarnings("ignore", message=r".*`self.trainer` reference is not registered")


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU (Lightning's `bf16-mixed`), nothing on the CPU (`32-true`)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bare_optimizer(model: Any, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and schedule of the method's `configure_optimizers`, for a run of `total_steps` in one
    epoch; it reads the step count from `model.trainer`, here a stand-in with only that (the model leaves
    detached from any Trainer)."""
    model.trainer = SimpleNamespace(estimated_stepping_batches=total_steps, max_epochs=1)
    try:
        conf = model.configure_optimizers()
    finally:
        model.trainer = None
    return conf["optimizer"], conf["lr_scheduler"]["scheduler"]


def clip_gradients(model: Any, opt: torch.optim.Optimizer) -> None:
    """The method's gradient-norm clip as the Trainer applies it without `gradient_clip_val` (the train
    CLI sets none): `grad_clip_norm` over the optimiser's parameters, by `clip_grad_norm_`."""
    norm = model.grad_clip_norm
    if norm:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], norm)


def bare_step(model: Any, opt: Any, sched: Any, batch: Any, i: int, device: torch.device) -> None:
    """One plain-PyTorch training step `i` of the LightningModule (its own `training_step`)."""
    opt.zero_grad(set_to_none=True)
    with autocast(device):
        loss = model.training_step(batch, i)
    loss.backward()
    clip_gradients(model, opt)
    opt.step()
    sched.step()


@dataclass
class Run:
    """One timed run of a loop."""

    seconds_per_step: float
    peak_mb: float | None
    syncs: Counter[str] = field(default_factory=Counter)
    cuda_syncs: list[str] = field(default_factory=list)


def run_bare(
    model: Any, batches: list[Any], warmup: int, steps: int, device: torch.device, probe: bool
) -> Run:
    model.to(device).train()
    peak = PeakMemory(device).start()
    opt, sched = bare_optimizer(model, warmup + steps)
    probe_mode, cuda_found = SyncProbe(), []
    for i in range(warmup):
        with contextlib.ExitStack() as stack:
            if probe and i == warmup - 1:  # the probe watches the last warm-up step
                stack.enter_context(cuda_sync_debug(device, cuda_found))
                stack.enter_context(probe_mode)
            bare_step(model, opt, sched, batches[i % len(batches)], i, device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        bare_step(model, opt, sched, batches[i % len(batches)], i, device)
    sync(device)
    seconds = (time.perf_counter() - t0) / steps
    mb = peak.stop()
    del opt, sched
    return Run(seconds, mb, probe_mode.found if probe else Counter(), cuda_found)


def count_flops(model: Any, batch: Any, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward) as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    model.to(device).train()
    opt, sched = bare_optimizer(model, 1)
    with FlopCounterMode(display=False) as counter:
        bare_step(model, opt, sched, batch, 0, device)
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _lightning_callbacks() -> tuple[type, type]:
    """(StepTimer, ProbeStep) Lightning callbacks, defined on first use (Lightning imports in seconds)."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Wall time from the end of the last warm-up step to the end of the last step (device synced)."""

        def __init__(self, device: torch.device, warmup: int, total: int) -> None:
            self.device, self.warmup, self.total = device, warmup, total
            self.t0 = self.t1 = 0.0

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            if i == self.warmup - 1:
                sync(self.device)
                self.t0 = time.perf_counter()
            if i == self.total - 1:
                sync(self.device)
                self.t1 = time.perf_counter()

    class ProbeStep(Callback):
        """`SyncProbe` over one whole loop iteration: from batch `step`'s start to the next batch's start
        (the step, the optimiser, Lightning's logging and hooks, the next fetch)."""

        def __init__(self, device: torch.device, step: int) -> None:
            self.device, self.step = device, step
            self.probe = SyncProbe()
            self.cuda_found: list[str] = []
            self._stack: contextlib.ExitStack | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            if i == self.step:
                self._stack = contextlib.ExitStack()
                self._stack.enter_context(cuda_sync_debug(self.device, self.cuda_found))
                self._stack.enter_context(self.probe)
            elif i == self.step + 1:
                self._close()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._close()

        def _close(self) -> None:
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    return StepTimer, ProbeStep


def run_suite(
    model: Any,
    dm: Any,
    batches: list[Any],
    warmup: int,
    steps: int,
    device: torch.device,
    probe: bool,
    compile_backend: str,
) -> Run:
    import lightning as L

    from fgbench.speed import SpeedOptions

    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning sets INFO when it is imported
        logging.getLogger(name).setLevel(logging.ERROR)

    StepTimer, ProbeStep = _lightning_callbacks()
    total = warmup + steps
    dm.ready = [batches[i % len(batches)] for i in range(total)]
    timer = StepTimer(device, warmup, total)
    callbacks: list[Any] = [timer]
    if not getattr(model, "speed_options", {}).get("compiled_modules"):  # compiled once, in the first run
        callbacks.append(SpeedOptions(channels_last="off", compile=compile_backend))
    prober = ProbeStep(device, warmup - 2) if probe else None
    if prober is not None:
        callbacks.append(prober)
    # the train CLI's settings where they matter to a step: precision (profile/*.yaml) and no
    # gradient_clip_val (the method's `configure_gradient_clipping` clips by its `grad_clip_norm`)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_epochs=1,
        limit_train_batches=total,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    peak = PeakMemory(device).start()
    trainer.fit(model, datamodule=dm)
    mb = peak.stop()
    if timer.t1 <= timer.t0:
        raise RuntimeError(f"the timer saw no steady-state steps ({total} batches, warm-up {warmup})")
    found = prober.probe.found if prober is not None else Counter()
    return Run((timer.t1 - timer.t0) / steps, mb, found, prober.cuda_found if prober else [])
