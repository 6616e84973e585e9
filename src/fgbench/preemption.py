"""Save a resumable checkpoint when the run is told to stop (preemption, a time limit, a sweep stopping).

SLURM sends SIGTERM before it preempts or requeues a job, and (through submitit) SIGUSR2 before the time
limit. Lightning notes SIGTERM and stops at the end of the current batch; `SaveOnSignal` writes
`checkpoints/last.ckpt` at that same batch end, so `--ckpt_path last.ckpt` resumes exactly there (the
training loader's position is part of the checkpoint). SIGUSR2, whose default action would kill the process
before anything is saved, is turned into the same SIGTERM path. The process then exits with status 143.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(SystemExit):
    """Raised after the checkpoint is saved: the run stops with status 143, its test not run."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


class SaveOnSignal(Callback):
    """On SIGTERM (or SIGUSR2), save last.ckpt at the end of the current training batch and stop."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "last.ckpt"
        self._previous: Any = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR2, _as_sigterm)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGUSR2, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        stop = trainer.received_sigterm
        if trainer.world_size > 1:  # every rank saves at the same step (a rank may see the signal later)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        # log this batch's step metrics now (Lightning would right after this hook), so the checkpoint's flush
        # of metrics.csv holds every row up to the saved step and the resumed run logs none of them twice
        connector = trainer._logger_connector
        connector.on_batch_end()
        connector.update_train_step_metrics()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        raise Preempted()


def _as_sigterm(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
