"""Where a `fit` run will write, resolved from its command line without training (the sweep's resume test).

A sweep cell is finished when its run directory holds result.json. The directory is named by the hash of
the resolved config's identity (fgbench.identity, through train_cli.FgbenchCLI._run_identity, which also
finds a folder named by the first scheme), so the only way to know it without drifting from train_cli is to
let the same LightningCLI parse the same arguments and stop right before any class is instantiated:
`resolve_run` does exactly that, so it costs a config parse (no model, no data, no trainer).
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgbench.results import RESULT_FILE


@dataclass(frozen=True)
class ResolvedRun:
    """The identity of one `fit` run: its directory and the record train_cli starts result.json with."""

    directory: Path
    record: dict[str, Any]  # method, dataset, profile, seed, config_hash, run_dir

    @property
    def result_path(self) -> Path:
        return self.directory / RESULT_FILE

    @property
    def finished(self) -> bool:
        return self.result_path.is_file()


class _Resolved(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by the resolving CLI once the config is parsed, carrying the run identity."""

    def __init__(self, run: ResolvedRun) -> None:
        super().__init__(str(run.directory))
        self.run = run


def _resolving_cli() -> type:
    """FgbenchCLI that stops before instantiating anything (import deferred: it pulls in Lightning)."""
    from fgbench.train_cli import FgbenchCLI

    class ResolvingCLI(FgbenchCLI):
        def before_instantiate_classes(self) -> None:
            directory, record = self._run_identity()
            raise _Resolved(ResolvedRun(directory, record))

    return ResolvingCLI


def resolve_run(args: Sequence[str]) -> ResolvedRun:
    """The run directory `python -m fgbench <args>` would write, e.g. args = ["fit", "--config", ...].

    The CLI is built with the same options as `train_cli.run`. Invalid arguments raise ValueError with the
    parser's message (LightningCLI would print it and exit).
    """
    from fgbench.registry import load_plugins
    from fgbench.train_cli import cli_kwargs

    load_plugins()
    cli = _resolving_cli()
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to k" once per cell
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # args are always given here, whatever sys.argv holds
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            kwargs = cli_kwargs(args)
            kwargs["parser_kwargs"] = {**kwargs["parser_kwargs"], "exit_on_error": False}
            cli(**kwargs)
    except _Resolved as done:
        return done.run
    except argparse.ArgumentError as err:
        raise ValueError(f"invalid arguments `{' '.join(args)}`: {err}") from None
    except SystemExit as err:  # a parser that still exits on error
        raise ValueError(f"invalid arguments `{' '.join(args)}` (parser exit {err.code})") from None
    finally:
        seed_log.setLevel(level)
    raise RuntimeError("LightningCLI returned without reaching before_instantiate_classes")
