"""`python -m fgbench fit|validate|test` through LightningCLI (ARCHITECTURE.md, "Data flow of one run").

Config files merge left to right (`--config data/... --config method/... --config profile/tiny.yaml`);
`--print_config` shows the result. The run directory `runs/<dataset>/<method>/<profile>/seed<k>-<hash>/`
is named by the resolved config's hash, never by time, and holds config.yaml, the CSV log, checkpoints and
result.json. `fit` also tests the last-epoch weights and writes result.json (the suite's default;
PROTOCOLS.md §1 "Checkpoint: last epoch").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from rich.console import Console
from rich.table import Table

from fgbench.data.module import RetrievalDataModule
from fgbench.errors import new_run_dir
from fgbench.io import check_checkpoint
from fgbench.method import RetrievalMethod
from fgbench.registry import load_plugins
from fgbench.results import RESULT_FILE, config_hash, device_name, provenance, run_dir, write_result
from fgbench.speed import CHANNELS_LAST, COMPILE, SpeedOptions

# config keys that name where or how a run is logged, not what it computes: excluded from the hash
_UNHASHED = (
    "data.init_args.root",
    "data.init_args.num_workers",
    "data.init_args.pin_memory",
    "data.init_args.persistent_workers",
    "data.init_args.eval_batch_size",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "run",
    "ckpt_path",
    "config",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
)


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *path, last = dotted.split(".")
    node: Any = cfg
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


class ResultWriter(Callback):
    """Writes result.json after a test run and prints the metrics table."""

    def __init__(self, directory: Path, record: dict[str, Any]) -> None:
        self.directory, self.record = directory, record
        self.start = time.perf_counter()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, RetrievalMethod)
        result = pl_module.last_result.get("test")
        if result is None or not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        record = {
            **self.record,
            "split": getattr(dm, "test_split", "test"),
            "metrics": result.metrics,
            "details": result.details,
            "provenance_note": pl_module.provenance,
            "device": device_name(),
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "wall_time_s": time.perf_counter() - self.start,
            "speed_options": getattr(pl_module, "speed_options", {}),
            "data": dm.loaded.record() if isinstance(dm, RetrievalDataModule) else {},
            **provenance(),
        }
        path = write_result(self.directory / RESULT_FILE, record)
        table = Table(
            title=f"{record['method']} on {record['dataset']} ({record['profile']}, seed {record['seed']})"
        )
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in result.metrics.items():
            table.add_row(k, f"{v:.2f}")
        console = Console()
        console.print(table)
        console.print(f"[dim]written: {path}[/dim]", soft_wrap=True)  # a path the user copies: never wrapped


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

    def _run_identity(self) -> tuple[Path, dict[str, Any]]:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        plain = cfg.as_dict()
        for key in _UNHASHED:
            _drop(plain, key)
        chash = config_hash(plain)
        group = config_hash({k: v for k, v in plain.items() if k != "seed_everything"})
        data_cls = _resolve(plain["data"]["class_path"])
        model_cls = _resolve(plain["model"]["class_path"])
        profile = plain["model"].get("init_args", {}).get("profile", "tiny")
        seed = int(cfg.get("seed_everything"))
        method = getattr(model_cls, "name", "") or model_cls.__name__
        dataset = getattr(data_cls, "name", "") or data_cls.__name__
        directory = run_dir(cfg["run"]["root"], dataset, method, profile, seed, chash)
        record = {
            "method": method,
            "dataset": dataset,
            "profile": profile,
            "seed": seed,
            "config_hash": chash,
            "group_hash": group,  # the same config over seeds (leaderboards aggregate by it)
            "variant": cfg["run"]["variant"],
            "run_dir": str(directory),
        }
        return directory, record

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        directory, record = self._run_identity()
        new_run_dir(directory)  # removed again if the command fails before a checkpoint or result exists
        loggers: list[Logger] = [CSVLogger(save_dir=str(directory), name="", version="")]
        run = self.config[self.subcommand]["run"]
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
            ModelCheckpoint(
                dirpath=str(directory / "checkpoints"),
                save_last=True,
                save_top_k=0,
                every_n_train_steps=run["ckpt_every_n_steps"] or None,
            ),
            ResultWriter(directory, record),
            SpeedOptions(run["channels_last"], run["compile"]),
        ]
        trainer_cfg = {
            **self._get(self.config_init, "trainer", default={}),
            **kwargs,
            "default_root_dir": str(directory),
            "logger": loggers,
        }
        if not getattr(_resolve(self.config[self.subcommand]["model"]["class_path"]), "trains", True):
            # an evaluation-only method: `fit` trains nothing and goes straight to the test run
            trainer_cfg.update(limit_train_batches=0, limit_val_batches=0, max_epochs=1)
        if trainer_cfg.get("enable_progress_bar", True) is not False:
            callbacks.append(RichProgressBar())
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(trainer_cfg, extra + callbacks)

    def after_fit(self) -> None:
        """Test the last-epoch weights (no model selection on test)."""
        if self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)


def _resolve(class_path: str) -> type:
    import importlib

    mod, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(mod), name)


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
    FgbenchCLI(**cli_kwargs(args))
    return 0
