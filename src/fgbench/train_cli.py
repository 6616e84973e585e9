"""`python -m fgbench fit|validate|test` through LightningCLI (docs/architecture.md, "Data flow of one run").

Config files merge left to right (`--config data/... --config method/... --config profile/tiny.yaml`);
`--print_config` shows the result. The run directory `runs/<dataset>/<method>/<profile>/seed<k>-<hash>/`
is named by the hash of the config's identity (fgbench.identity: the values that change results and differ
from the defaults), never by time, and holds config.yaml, metrics.csv, checkpoints and result.json. `fit`
also tests the last-epoch weights and writes result.json (the suite's default; docs/protocols.md §1
"Checkpoint: last epoch"). Every test also writes the per-query outcomes beside its result,
`outcomes.<split>[.<variant>].npz` (fgbench.evaluation.outcomes), named in the result's `outcomes`.

The record of a run is never lost or misfiled:

- a resumed `fit` continues metrics.csv (rows up to the checkpoint are kept, later ones are re-run) and
  result.json's `wall_time_s` sums every segment (`wall_segments`; a killed segment counts up to its last
  checkpoint, the work after it is re-run and counted again in the next segment);
- `test --ckpt_path RUN/checkpoints/X.ckpt` files its result with that run: with the run's own config it
  updates (or confirms) RUN/result.json, keeping the training record and appending to its `tests`; with a
  `--run.variant NAME`, changed test-time switches or another checkpoint step, it writes
  RUN/result.<variant>.json (named from the differences when no name is given), which leaderboards show as
  `method[variant]`. A test never overwrites a trained result.json;
- a checkpoint of another method class, or trained with other (non test-time) hyper-parameters than the
  config it is loaded under, is refused with a message naming both.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fgbench.data.module import RetrievalDataModule
from fgbench.errors import new_run_dir
from fgbench.evaluation.outcomes import outcomes_file, save_outcomes
from fgbench.identity import differences, group_hash, identity, legacy_hash, same
from fgbench.io import check_checkpoint
from fgbench.method import RetrievalMethod
from fgbench.preemption import SaveOnSignal
from fgbench.registry import DATAMODULES, load_plugins, resolve
from fgbench.results import (
    RESULT_FILE,
    config_hash,
    device_name,
    provenance,
    read_result,
    result_file,
    run_dir,
    write_result,
)
from fgbench.speed import CHANNELS_LAST, COMPILE, SpeedOptions

# init arguments a test may set freely whatever the checkpoint was trained with (they only change scoring);
# a method adds its own with a `test_time_args` class attribute
TEST_TIME_ARGS = frozenset({"rerank_k", "eval_block_rows", "eval_col_block"})


class CheckpointMismatch(ValueError):
    """A checkpoint loaded under a config of another method or other training hyper-parameters."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- metrics.csv that survives a resume -----------------------------------------------------------------


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing file is continued (resume, test) instead of deleted."""

    def __init__(self, log_dir: str, filename: str, keep: bool) -> None:
        self.NAME_METRICS_FILE = filename
        self._keep = keep
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._keep:
            super()._check_log_dir_exists()
            return
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def truncate_from(self, step: int) -> None:
        """Drop rows logged at `step` or later (a run resumed from that step logs them again)."""
        self.save()
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) == len(rows):
            return
        with self._fs.open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)


class RunLogger(CSVLogger):
    """CSVLogger writing `filename` in the run directory; `keep` continues an existing file."""

    def __init__(self, save_dir: str, filename: str = "metrics.csv", keep: bool = False) -> None:
        super().__init__(save_dir=save_dir, name="", version="")
        self._filename, self._keep = filename, keep

    @property
    @rank_zero_experiment
    def experiment(self) -> _KeepingWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._filename, self._keep)
        return self._experiment


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always ends at the final weights.

    Saving every N steps alone leaves last.ckpt at the last multiple of N, short of the weights `fit` tested.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)


# -- where a run's result goes ---------------------------------------------------------------------------


@dataclass
class RunTarget:
    """Where this invocation files its result and how (`fit`, `retest` of the trained run, or `test`)."""

    directory: Path
    record: dict[str, Any]
    mode: str  # fit | retest | test
    result_name: str = RESULT_FILE
    ckpt: dict[str, Any] = field(default_factory=dict)  # the loaded checkpoint's epoch, step, segments

    @property
    def result_path(self) -> Path:
        return self.directory / self.result_name


def _segment_total(segments: Sequence[dict[str, Any]]) -> float:
    return float(sum(s.get("seconds", 0.0) for s in segments))


class ResultWriter(Callback):
    """Writes the run's result after a test and prints the metrics table once.

    Also the run's clock: the wall time of every `fit` segment travels in the checkpoint, so a resumed run's
    `wall_time_s` is the sum of its segments; and the CSV log is flushed whenever a checkpoint is saved, so a
    killed run's metrics.csv holds every row up to its last checkpoint.
    """

    def __init__(self, target: RunTarget) -> None:
        self.target = target
        self.start = time.perf_counter()
        self.started_at = _now()
        self.start_step = 0
        self.previous: list[dict[str, Any]] = []
        self._trainer: L.Trainer | None = None

    # -- the clock ----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step  # after a resume: the checkpoint's step

    def _current(self) -> dict[str, Any]:
        step = self._trainer.global_step if self._trainer is not None else 0
        return {
            "started": self.started_at,
            "seconds": round(time.perf_counter() - self.start, 3),
            "from_step": self.start_step,
            "to_step": step,
        }

    def state_dict(self) -> dict[str, Any]:
        if self.target.mode != "fit":
            return {}
        return {"segments": [*self.previous, self._current()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.target.mode == "fit":
            self.previous = [dict(s) for s in state_dict.get("segments", [])]

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: Any) -> None:
        for logger in trainer.loggers:  # rows up to this checkpoint reach the disk with it
            if isinstance(logger, RunLogger):
                logger.save()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: Any) -> None:
        if self.target.mode != "fit":
            return
        for logger in trainer.loggers:  # a resume: rows after the checkpoint are logged again
            if isinstance(logger, RunLogger) and trainer.is_global_zero:
                logger.experiment.truncate_from(int(checkpoint.get("global_step", 0)))

    # -- the record ---------------------------------------------------------------------------------
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, RetrievalMethod)
        result = pl_module.last_result.get("test")
        if result is None or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        assert isinstance(dm, RetrievalDataModule)
        split = dm.test_split
        measured = {
            "split": split,
            "metrics": result.metrics,
            "details": result.details,
            "data": dm.loaded.record() if isinstance(dm, RetrievalDataModule) else {},
        }
        if result.outcomes is not None:  # what the metrics are made of, query by query, beside the result
            beside = self.target.result_name != RESULT_FILE  # outcomes.<split>[.<variant>].npz, as the result
            name = outcomes_file(split, str(self.target.record.get("variant") or "") if beside else "")
            save_outcomes(self.target.directory / name, result.outcomes)
            measured["outcomes"] = {split: name}
        setting = {
            "device": device_name(),
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "speed_options": getattr(pl_module, "speed_options", {}),
            "launcher": json.loads(os.environ.get("FGBENCH_LAUNCHER", '{"launcher": "local"}')),
        }
        seconds = time.perf_counter() - self.start
        target = self.target
        if target.mode == "retest":
            record = self._retest_record(measured, setting, seconds)
        else:
            record = {**target.record, **measured, "provenance_note": pl_module.provenance, **setting}
            if target.mode == "fit":
                segments = [*self.previous, self._current()]
                record.update(
                    epochs=trainer.current_epoch,
                    global_step=trainer.global_step,
                    wall_time_s=_segment_total(segments),
                    wall_segments=segments,
                )
            else:  # a test-only result: the checkpoint's training state, and this test's own time
                segments = list(target.ckpt.get("segments", []))
                record.update(
                    epochs=target.ckpt.get("epoch"),
                    global_step=target.ckpt.get("global_step"),
                    wall_time_s=_segment_total(segments) if segments else None,
                    wall_segments=segments,
                    test_wall_time_s=seconds,
                    tested_at=_now(),
                )
            record.update(provenance())
        path = write_result(target.result_path, record)
        _print_table(record, result.metrics, result.details.get("protocol", ""), path)

    def _retest_record(
        self, measured: dict[str, Any], setting: dict[str, Any], seconds: float
    ) -> dict[str, Any]:
        """The trained record with the new measurement; its training fields kept, the test appended."""
        trained = read_result(self.target.result_path)
        changed = sorted(
            k
            for k in set(trained.get("metrics", {})) | set(measured["metrics"])
            if not same(trained.get("metrics", {}).get(k), measured["metrics"].get(k))
        )
        test = {
            "at": _now(),
            "ckpt_path": self.target.record.get("ckpt_path"),
            **setting,
            "wall_time_s": seconds,
            "changed_metrics": changed,
            "git_commit": provenance()["git_commit"],
            "git_dirty": provenance()["git_dirty"],
        }
        if changed:
            Console(stderr=True).print(
                f"[yellow]the re-test changed {', '.join(changed)} of {self.target.result_path} "
                "(the new values are recorded; the previous ones are kept under tests)[/yellow]",
                soft_wrap=True,
            )
            test["previous_metrics"] = trained.get("metrics", {})
        return {**trained, **measured, "tests": [*trained.get("tests", []), test]}


def _print_table(record: dict[str, Any], metrics: dict[str, float], protocol: str, path: Path) -> None:
    """One metrics table for the test's protocol, then where the record went."""
    variant = f"[{record['variant']}]" if record.get("variant") else ""
    table = Table(
        title=escape(
            f"{record['method']}{variant} on {record['dataset']} ({record['profile']}, seed {record['seed']})"
            + (f": {protocol}" if protocol else "")
        )
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.2f}")
    console = Console()
    console.print(table)
    console.print(f"[dim]written: {escape(str(path))}[/dim]", soft_wrap=True)  # a path the user copies


def _variant_name(diff: dict[str, tuple[Any, Any]], step: int | None) -> str:
    """A result-file-safe name from what a test changed: `lam=0.1`, `step5`, `refine=false,rerank_k=10`."""

    def text(v: Any) -> str:
        if v is None:
            return "default"
        if isinstance(v, bool):
            return str(v).lower()
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))

    parts = [f"step{step}"] if step is not None else []
    parts += [f"{key.rsplit('.', 1)[-1]}={text(new)}" for key, (_, new) in diff.items()]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    return name if len(name) <= 60 else f"cfg-{config_hash(sorted(diff))[:8]}"


def _trained_record(directory: Path) -> dict[str, Any] | None:
    """The run's own result.json when it holds a trained (fit) result, else None."""
    path = directory / RESULT_FILE
    if not path.is_file():
        return None
    try:
        rec = read_result(path)
    except (OSError, ValueError):
        return None
    return rec if rec.get("origin", "fit") == "fit" else None


def _owner(ckpt_path: str | None, root: Path) -> Path | None:
    """The run directory a checkpoint lies in (RUN/checkpoints/X.ckpt under the runs root), if any."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    ckpt = Path(ckpt_path).resolve()
    run = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or not (run / "config.yaml").is_file():
        return None
    return run if run.is_relative_to(root.resolve()) else None


class FgbenchCLI(LightningCLI):
    """LightningCLI with hash-named run directories, CSV logging, optional wandb and result.json."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--run.root", default="runs", help="root of the run directories")
        parser.add_argument(
            "--run.wandb",
            default="off",
            choices=["off", "offline", "online"],
            help="also log to Weights & Biases (offline unless asked)",
        )
        parser.add_argument(
            "--run.variant",
            default="",
            help="a label for an ablation or variant config (leaderboards show it as method[variant])",
        )
        parser.add_argument(
            "--run.ckpt_every_n_steps",
            type=int,
            default=0,
            help="also save last.ckpt every N training steps (mid-epoch resume)",
        )
        parser.add_argument(
            "--run.channels_last",
            default="auto",
            choices=list(CHANNELS_LAST),
            help="NHWC weights for convolutions (auto: on CUDA when the model has one)",
        )
        parser.add_argument(
            "--run.compile",
            default="off",
            choices=list(COMPILE),
            help="torch.compile the model's towers and heads with this backend",
        )

    # -- checkpoints ----------------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        """Check a checkpoint against the config instead of letting its hyper-parameters replace the config's.

        LightningCLI would silently swap in the checkpoint's class and arguments (an irra checkpoint under
        clip_ft's config evaluates irra, and the test's own test-time switches are lost). Here the config
        stays what the command says; a checkpoint of another class or other training arguments is an error.
        """
        self._ckpt_meta: dict[str, Any] = {}
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        model = self.config[sub].as_dict().get("model") or {}
        class_path = model.get("class_path")
        if not class_path:  # no model in the config: the checkpoint's, as LightningCLI does
            super()._parse_ckpt_path()
            return
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        clock = (ckpt.get("callbacks") or {}).get(ResultWriter.__qualname__) or {}
        self._ckpt_meta = {
            "path": str(ckpt_path),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "segments": list(clock.get("segments", [])),
        }
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        trained = hparams.pop("_class_path", None) or _config_class(Path(ckpt_path))
        if trained and trained != class_path:
            raise CheckpointMismatch(
                f"checkpoint {ckpt_path} holds a {trained} model, but the config loads it as {class_path}; "
                "give the config the checkpoint was trained with (its run's config.yaml)"
            )
        init_args = model.get("init_args") or {}
        free = TEST_TIME_ARGS | set(getattr(resolve(class_path), "test_time_args", ()))
        bad = [
            f"model.init_args.{k}: checkpoint {_show(v)}, config {_show(init_args[k])}"
            for k, v in sorted(hparams.items())
            if k in init_args and k not in free and not same(v, init_args[k])
        ]
        if bad:
            raise CheckpointMismatch(
                f"checkpoint {ckpt_path} was trained with other settings than the config gives "
                f"({class_path}): "
                + "; ".join(bad)
                + ". Give the config the checkpoint was trained with (its run's config.yaml); only test-time "
                f"arguments ({', '.join(sorted(free))}) may differ"
            )

    # -- where the result goes ------------------------------------------------------------------------
    def _run_identity(self) -> tuple[Path, dict[str, Any]]:
        target = self._run_target()
        return target.directory, target.record

    def _run_target(self) -> RunTarget:
        cached = getattr(self, "_target", None)
        if cached is not None:
            return cached
        sub = self.subcommand
        cfg = self.config[sub] if sub else self.config
        config = cfg.as_dict()
        defaults = self._parser(sub).get_defaults().as_dict()
        ident = identity(config, defaults)
        chash = config_hash(ident)
        data_cls = resolve(config["data"]["class_path"], DATAMODULES)
        model_cls = resolve(config["model"]["class_path"])
        profile = config["model"].get("init_args", {}).get("profile", "tiny")
        seed = int(cfg.get("seed_everything"))
        method = model_cls.name or model_cls.__name__
        dataset = data_cls.name or data_cls.__name__
        root = Path(cfg["run"]["root"])
        directory = run_dir(root, dataset, method, profile, seed, chash)
        legacy = run_dir(root, dataset, method, profile, seed, legacy_hash(config))
        if not directory.exists() and legacy.exists():  # a run directory named by the first scheme
            directory = legacy
        variant = str(cfg["run"]["variant"] or "")
        record = {
            "method": method,
            "dataset": dataset,
            "profile": profile,
            "seed": seed,
            "config_hash": directory.name.split("-", 1)[1],
            "group_hash": group_hash(ident),  # the same config over seeds (leaderboards aggregate by it)
            "variant": variant,
            "run_dir": str(directory),
            "origin": "fit" if sub in (None, "fit") else "test",
            "config_identity": ident,
        }
        if sub in (None, "fit"):
            self._target = RunTarget(directory, record, "fit")
            return self._target
        ckpt = getattr(self, "_ckpt_meta", {}) or {}
        owner = _owner(cfg.get("ckpt_path"), root)
        if owner is not None:
            directory = owner
        trained = _trained_record(directory)
        diff: dict[str, tuple[Any, Any]] = {}
        if owner is not None or trained is not None:
            diff = differences(self._identity_of(directory, trained, defaults), ident)
        step: int | None = None
        if ckpt and (owner is not None or trained is not None):
            if trained is None or ckpt.get("global_step") != trained.get("global_step"):
                step = ckpt.get("global_step")  # not the state the trained result was measured at
        # no checkpoint at all: the initial weights, not the trained ones (evaluation-only methods aside)
        untrained = not cfg.get("ckpt_path") and trained is not None and getattr(model_cls, "trains", True)
        if not variant and (diff or step is not None or untrained):
            variant = "init" if untrained and not diff else _variant_name(diff, step)
        # the trained run itself tested again (a variant run's own label included): it updates result.json
        own = trained is not None and variant == str(trained.get("variant") or "")
        mode = "retest" if own and not (diff or step is not None or untrained) else "test"
        record.update(
            variant=variant,
            run_dir=str(directory),
            config_hash=chash,
            ckpt_path=str(cfg.get("ckpt_path")) if cfg.get("ckpt_path") else None,
        )
        name = result_file(variant) if mode == "test" and variant else RESULT_FILE
        self._target = RunTarget(directory, record, mode, name, ckpt)
        return self._target

    def _identity_of(
        self, directory: Path, trained: dict[str, Any] | None, defaults: dict[str, Any]
    ) -> dict[str, Any]:
        """The identity of a trained run: from its config.yaml, else what its result.json recorded."""
        saved = directory / "config.yaml"
        if saved.is_file():
            return identity(yaml.safe_load(saved.read_text(encoding="utf-8")) or {}, defaults)
        return dict((trained or {}).get("config_identity") or {})

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        target = self._run_target()
        directory, record = target.directory, target.record
        new_run_dir(directory)  # removed again if the command fails before a checkpoint or result exists
        sub = self.subcommand or "fit"
        if sub == "fit":  # a resume continues metrics.csv; a fresh fit starts it again
            csv_logger = RunLogger(str(directory), keep=bool(self.config[sub].get("ckpt_path")))
            config_name = "config.yaml"
        else:  # a test or validate never touches the training run's log or config
            suffix = (record["variant"] if target.mode == "test" else "") or sub
            csv_logger = RunLogger(str(directory), f"metrics.{suffix}.csv", keep=True)
            config_name = f"config.{suffix}.yaml"
        self.save_config_kwargs = {**self.save_config_kwargs, "config_filename": config_name}
        loggers: list[Logger] = [csv_logger]
        run = self.config[sub]["run"]
        mode = run["wandb"]
        if mode != "off":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(
                WandbLogger(
                    save_dir=str(directory),
                    offline=mode == "offline",
                    name=f"{record['dataset']}/{record['method']}/{record['config_hash']}",
                )
            )
        callbacks: list[Callback] = [
            LastCheckpoint(
                dirpath=str(directory / "checkpoints"),
                save_last=True,
                save_top_k=0,
                every_n_train_steps=run["ckpt_every_n_steps"] or None,
            ),
            SaveOnSignal(directory / "checkpoints"),
            ResultWriter(target),
            SpeedOptions(run["channels_last"], run["compile"]),
        ]
        trainer_cfg = {
            **self._get(self.config_init, "trainer", default={}),
            **kwargs,
            "default_root_dir": str(directory),
            "logger": loggers,
        }
        if not getattr(resolve(self.config[sub]["model"]["class_path"]), "trains", True):
            # an evaluation-only method: `fit` trains nothing and goes straight to the test run
            trainer_cfg.update(limit_train_batches=0, limit_val_batches=0, max_epochs=1)
        if trainer_cfg.get("enable_progress_bar", True) is not False:
            callbacks.append(RichProgressBar())
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(trainer_cfg, extra + callbacks)

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand == "test":  # ResultWriter prints the table once; Lightning's would repeat it per loader
            kwargs["verbose"] = False
        return kwargs

    def after_fit(self) -> None:
        """Test the last-epoch weights (no model selection on test)."""
        if self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)


def _show(value: Any) -> str:
    from fgbench.identity import plain

    return json.dumps(plain(value), default=str)


def _config_class(ckpt: Path) -> str | None:
    """model.class_path of the run a checkpoint lies in (RUN/checkpoints/X.ckpt beside RUN/config.yaml)."""
    saved = ckpt.resolve().parent.parent / "config.yaml"
    if ckpt.resolve().parent.name != "checkpoints" or not saved.is_file():
        return None
    try:
        model = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("model") or {}
    except yaml.YAMLError:
        return None
    return model.get("class_path") if isinstance(model, dict) else None


def _ckpt_arg(args: Sequence[str]) -> str | None:
    for i, a in enumerate(args):
        if a == "--ckpt_path" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--ckpt_path="):
            return a.split("=", 1)[1]
    return None


def cli_kwargs(args: Sequence[str]) -> dict[str, Any]:
    """The options every fgbench LightningCLI is built with (`run`, and `fgbench.cells` to resolve runs)."""
    return {
        "model_class": RetrievalMethod,
        "datamodule_class": RetrievalDataModule,
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_kwargs": {"overwrite": True},
        "seed_everything_default": 0,  # deterministic by default; the run directory names the seed
        "args": list(args),
        "parser_kwargs": {"default_env": False, "exit_on_error": False},  # errors: fgbench.errors
    }


def run(args: Sequence[str]) -> int:
    """Entry point used by `python -m fgbench fit|validate|test ...`."""
    ckpt = _ckpt_arg(args)
    if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
        check_checkpoint(ckpt)  # before LightningCLI reads its hyper-parameters
    load_plugins()
    torch.set_float32_matmul_precision("high")
    try:
        FgbenchCLI(**cli_kwargs(args))
    except CheckpointMismatch as err:  # one clean message: nothing ran yet
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
