"""RetrievalMethod: the LightningModule every method extends (docs/methods.md §0, docs/architecture.md step
3-4).

A method implements `losses(batch)` (named loss terms), `encode_queries`, `encode_gallery` and, when its
scorer is not the dot product of global vectors, `score` / `score_pairs`. The base class owns everything
shared: loss weighting and logging, optimiser and schedule from config, and the evaluation loop (encode
both loaders, gather and de-duplicate across devices, pool class queries, score in blocks through the one
evaluator, log `val/<metric>` and `test/<metric>`, write result.json). No method computes its own metrics.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fgbench.data.batches import move_batch
from fgbench.data.module import DataInfo, RetrievalDataModule
from fgbench.data.processor import BasicProcessor, Processor
from fgbench.evaluation import EvalResult, EvalSpec, FunctionSource, evaluate, get_protocol
from fgbench.evaluation.distributed import gather_by_index
from fgbench.evaluation.per_query import pooled_ids
from fgbench.features import Features
from fgbench.optim import OptimConfig, build_optimizer, build_scheduler, param_groups


class RetrievalMethod(L.LightningModule):
    """Base LightningModule of every retrieval method."""

    name: ClassVar[str] = ""  # registry name
    published_as: ClassVar[str] = ""  # its reference row's `method` in results/published.csv; "" none
    provenance: ClassVar[str] = ""  # "port of <repo>", "re-implementation from the paper's description", ...
    tasks: ClassVar[frozenset[str]] = frozenset()  # subset of {"text-image", "image-text", "composed"}
    trains: ClassVar[bool] = True  # False for evaluation-only methods (zero-shot)

    def __init__(
        self,
        profile: str = "tiny",
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        rerank_k: int | None = None,
        eval_block_rows: int = 256,
        eval_col_block: int = 4096,
    ) -> None:
        super().__init__()
        self.profile = profile
        self.optim_cfg = optim or OptimConfig()
        self.loss_weights = dict(loss_weights or {})
        self.rerank_k = rerank_k
        self.eval_block_rows = eval_block_rows
        self.eval_col_block = eval_col_block
        self.processor: Processor = BasicProcessor()
        self.last_result: dict[str, EvalResult] = {}
        self._eval_buf: dict[int, list[Features]] = {}
        self._fit_start = 0.0

    # -- to implement ----------------------------------------------------------------------------------
    def losses(self, batch: Any) -> dict[str, Tensor]:
        """Named loss terms of one training batch (weighted by `loss_weights`, default 1)."""
        raise NotImplementedError

    def encode_queries(self, batch: Any) -> Features:
        raise NotImplementedError

    def encode_gallery(self, batch: Any) -> Features:
        raise NotImplementedError

    def build(self, data: DataInfo) -> None:
        """Build what depends on the data (vocabulary, number of classes, region width) from its typed
        description (`RetrievalDataModule.info()`) and set `self.processor`."""

    # -- scoring (defaults: dot product of normalised global vectors) ------------------------------
    def score(self, q: Features, g: Features) -> Tensor:
        """[n_q, n_g] scores; must not depend on how queries and gallery are split into blocks."""
        assert q.glob is not None and g.glob is not None
        return q.glob.float() @ g.glob.float().T

    def score_pairs(self, q: Features, g: Features) -> Tensor:
        """[n] scores of the aligned pairs (q[i], g[i]); the same function as `score`."""
        assert q.glob is not None and g.glob is not None
        return (q.glob.float() * g.glob.float()).sum(-1)

    def rescore_pairs(self, q: Features, g: Features) -> Tensor:
        """[n] re-rank scores of aligned pairs (used when `rerank_k` is set); default `score_pairs`."""
        return self.score_pairs(q, g)

    def rerank(self, q: Features, g: Features, cand: Tensor) -> Tensor:
        """Re-scores [n_q, k] of each query's candidates `cand` (gallery indices)."""
        n, k = cand.shape
        rows = torch.arange(n, device=cand.device).repeat_interleave(k)
        return self.rescore_pairs(q.take(rows), g.take(cand.flatten())).view(n, k)

    def pool_queries(self, q: Features, groups: Tensor) -> tuple[Features, Tensor]:
        """Class-mean queries (class_reed): mean of each group's glob, renormalised; rows sorted by label."""
        assert q.glob is not None
        labels, inv = torch.unique(groups.to(q.glob.device), sorted=True, return_inverse=True)
        summed = torch.zeros(labels.numel(), q.glob.shape[1], device=q.glob.device).index_add_(
            0, inv, q.glob.float()
        )
        return Features(index=torch.arange(labels.numel()), glob=F.normalize(summed, dim=-1)), labels

    def prepare_eval(self, datamodule: RetrievalDataModule) -> None:
        """Optional test-time state (e.g. statistics over the gallery)."""

    # -- training ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        if dm is not None:
            dm.setup(stage)
            self.build(dm.info())
            dm.set_processor(self.processor)

    def _datamodule(self) -> RetrievalDataModule | None:
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        return dm if isinstance(dm, RetrievalDataModule) else None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if not self.trains:  # evaluation-only methods skip any batch a plain Trainer.fit hands them
            return None
        terms = self.losses(batch)
        total = sum(self.loss_weights.get(k, 1.0) * v for k, v in terms.items())
        bs = _batch_size(batch)
        # not prog_bar: Lightning turns progress-bar metrics into Python floats (`.item()`) after every batch,
        # a host-device sync per step even with the bar off (benchmarks/train_throughput.py)
        self.log("train/loss", total, batch_size=bs)
        for k, v in terms.items():
            self.log(f"train/{k}", v.detach(), batch_size=bs)
        if self._bar_refresh():  # the loss in the bar as a Python float: one sync per log interval
            self.log("loss", float(total.detach()), prog_bar=True, logger=False, batch_size=bs)
        return total  # type: ignore[return-value]

    def _bar_refresh(self) -> bool:
        """Whether this step shows the loss in a visible progress bar (every `log_every_n_steps` steps)."""
        trainer = self._trainer
        if trainer is None or trainer.progress_bar_callback is None:
            return False
        return self.global_step % max(1, trainer.log_every_n_steps) == 0

    @property
    def grad_clip_norm(self) -> float:
        """The method's own gradient-norm clip (its paper recipe; 0 = none). The trainer's setting wins."""
        return 0.0

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        clip = gradient_clip_val or self.grad_clip_norm
        if clip:
            self.clip_gradients(optimizer, clip, gradient_clip_algorithm or "norm")

    def configure_optimizers(self) -> Any:
        if not self.trains:  # evaluation-only (zero-shot): `fit` runs no training batch, then tests
            return None
        opt = build_optimizer(param_groups(self, self.optim_cfg), self.optim_cfg)
        total, per_epoch = self._schedule_steps()
        sched = build_scheduler(opt, self.optim_cfg, total, per_epoch)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _schedule_steps(self) -> tuple[int, int]:
        """(total optimiser steps, steps per epoch) from the training loader's length.

        Not `trainer.estimated_stepping_batches`: that makes Lightning build and prefetch the training loader
        before a checkpoint is restored, so a mid-epoch resume would lose the loader's position.
        """
        trainer, dm = self.trainer, self._datamodule()
        if dm is None:
            total = int(trainer.estimated_stepping_batches)
            return total, max(1, total // max(1, trainer.max_epochs or 1))
        batches = len(dm.train_dataloader())
        limit = trainer.limit_train_batches
        batches = min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit))
        per_epoch = max(1, batches // max(1, trainer.accumulate_grad_batches))
        total = (
            trainer.max_steps
            if trainer.max_steps and trainer.max_steps > 0
            else per_epoch * (trainer.max_epochs or 1)
        )
        return int(total), per_epoch

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states, so a run resumed mid-epoch draws the same dropout masks as an unbroken one."""
        checkpoint["fgbench_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "fgbench_rng" in checkpoint:
            set_rng_state(checkpoint["fgbench_rng"])

    # -- evaluation loop -----------------------------------------------------------------------------
    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        enc: Callable[[Any], Features] = self.encode_queries if dataloader_idx == 0 else self.encode_gallery
        self._eval_buf.setdefault(dataloader_idx, []).append(enc(batch))

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def _start_eval(self) -> None:
        self._eval_buf = {}
        dm = self._datamodule()
        if dm is not None:
            self.prepare_eval(dm)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish_eval("val")
        self._eval_buf = {}

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")
        self._eval_buf = {}

    def _finish_eval(self, stage: str) -> None:
        dm = self._datamodule()
        if dm is None:
            raise RuntimeError("evaluation needs a RetrievalDataModule attached to the trainer")
        split = dm.val_split if stage == "val" else dm.test_split
        es = dm.evaluation_set(split)
        q = self._gather(0, len(es.queries), "queries")
        g = self._gather(1, len(es.gallery), "gallery")
        result = self.evaluate_features(q, g, es.spec)
        self.last_result[stage] = result
        for k, v in result.metrics.items():
            self.log(f"{stage}/{k}", v, sync_dist=False, rank_zero_only=False)
        protocol = get_protocol(es.spec.protocol)
        if protocol.submission is not None and self.trainer.is_global_zero:
            out = Path(self.trainer.default_root_dir) / f"submission_{split}"
            paths = protocol.submission(result, es.spec, out)
            if paths:
                result.details["submission"] = [str(p) for p in paths]

    def _gather(self, idx: int, n: int, what: str) -> Features:
        return gather_features(self._eval_buf.get(idx, []), n, what)

    @torch.no_grad()
    def encode_split(self, dm: RetrievalDataModule, split: str) -> tuple[Features, Features, EvalSpec]:
        """(queries, gallery, spec) of one split encoded outside a Trainer, on this process only: one
        encoding scored under many test-time settings (`experiments.tune_rerank`)."""
        dm.set_processor(self.processor)
        self.prepare_eval(dm)
        es = dm.evaluation_set(split)
        loaders = dm.eval_dataloaders(split)
        encoders: tuple[Callable[[Any], Features], ...] = (self.encode_queries, self.encode_gallery)
        parts = [
            [enc(move_batch(b, self.device)) for b in loader]
            for enc, loader in zip(encoders, loaders, strict=True)
        ]
        q = gather_features(parts[0], len(es.queries), "queries")
        return q, gather_features(parts[1], len(es.gallery), "gallery"), es.spec

    @torch.no_grad()
    def evaluate_features(self, q: Features, g: Features, spec: EvalSpec) -> EvalResult:
        """Score gathered features with the evaluator under the spec's protocol."""
        if get_protocol(spec.protocol).pooled_queries:
            assert spec.query_labels is not None
            q, labels = self.pool_queries(q, spec.query_labels)
            spec = EvalSpec(
                spec.protocol,
                labels.cpu(),
                spec.gallery_labels,
                query_ids=pooled_ids(spec, labels),  # one row per class: its name
                gallery_names=spec.gallery_names,
                info=dict(spec.info),
            )
        rescore = _Timed(
            lambda r, c: self.rescore_pairs(q.take(r.flatten()), g.take(c.flatten())).view(r.shape)
        )
        source = FunctionSource(
            lambda r, c: self.score(q.take(r), g.take(c)),
            len(q),
            len(g),
            col_block=self.eval_col_block,
            pair_fn=rescore,
            device=q.index.device,
        )
        if get_protocol(spec.protocol).rows_are_images:
            source = source.T
        result = evaluate(source, spec, rerank_k=self.rerank_k, block_rows=self.eval_block_rows)
        if self.rerank_k is not None:  # the re-rank's cost (this rank's share of the query blocks)
            result.details.update(rerank_s=rescore.seconds, rerank_pairs=rescore.pairs)
        result.details.update(self.run_details())
        return result

    def run_details(self) -> dict[str, Any]:
        """What result.json's `details` records of this run's own settings (switches, variants), beside the
        evaluator's: override to say which of a method's options a result was measured with."""
        return {}


def gather_features(parts: list[Features], n: int, what: str) -> Features:
    """The n items of a split from this rank's encoded batches: gathered across ranks, in dataset order."""
    if not parts:
        raise RuntimeError(f"no {what} were encoded: evaluation needs both the query and gallery loaders")
    local = Features.cat(parts)
    tensors = {k: v for k, v in local.tensors().items() if k != "index"}
    return Features.from_tensors({"index": torch.arange(n), **gather_by_index(local.index, tensors, n)})


class _Timed:
    """A pair scorer that adds up its wall time and pair count (the re-rank cost in result.json)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn, self.seconds, self.pairs = fn, 0.0, 0

    def __call__(self, rows: Tensor, cols: Tensor) -> Tensor:
        _sync(rows.device)
        start = time.perf_counter()
        out = self.fn(rows, cols)
        _sync(out.device)
        self.seconds += time.perf_counter() - start
        self.pairs += rows.numel()
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, as tensors and primitives (weights_only-safe)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _batch_size(batch: Any) -> int:
    idx = getattr(batch, "index", None)
    return int(idx.numel()) if isinstance(idx, Tensor) else 1
