"""One clean error for every expected failure, in every command.

A command's `main(argv)` is wrapped by `cli_entry`: an expected failure (a bad path or value, a dataset that
does not validate, a config the parser refuses) is printed as one `error: ...` line naming what is wrong,
and the command exits with status 2, without a traceback. `--debug` (anywhere on the command line) or
`FGBENCH_DEBUG=1` lets the exception through with its traceback. A run folder that a failing command
created before any training result existed is removed again (`new_run_dir`), so a bad config or a missing
dataset leaves nothing half-written behind.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_USAGE = 2
DEBUG_ENV = "FGBENCH_DEBUG"
DEBUG_FLAG = "--debug"


class UserError(Exception):
    """An expected failure caused by the input; its message says what is wrong and what to do."""


class ConfigError(UserError, TypeError):
    """A config value of the wrong type or name (a TypeError too, as Python callers expect)."""


def _expected() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug (imports deferred: they are heavy)."""
    import json

    import yaml

    from fgbench.data.validation import DatasetError

    kinds: list[type[BaseException]] = [
        UserError,
        DatasetError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        ValueError,  # includes json.JSONDecodeError and UnicodeDecodeError
        KeyError,  # registry look-ups: "unknown dataset 'x'; registered: ..."
        argparse.ArgumentError,
        json.JSONDecodeError,
        yaml.YAMLError,
    ]
    if "lightning" in sys.modules or "lightning.fabric" in sys.modules:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        kinds.append(MisconfigurationException)  # e.g. "No supported gpu backend found!"
    try:
        from jsonargparse import ArgumentError as JsonargparseError

        kinds.append(JsonargparseError)
    except ImportError:  # pragma: no cover - jsonargparse ships with the suite
        pass
    return tuple(kinds)


def message(err: BaseException) -> str:
    """The user-facing text of an expected error (KeyError's repr quotes stripped)."""
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    else:
        text = str(err).strip()
    if "Does not validate against any of the Union subtypes" in text:
        text = _union_reasons(text)
    if "No supported gpu backend found" in text:
        text += " This machine has no usable GPU: use --trainer.accelerator cpu (or auto)."
    return text or type(err).__name__


_UNION_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
)


def _union_reasons(text: str) -> str:
    """jsonargparse's report for a value no Union member accepts, cut to the key, the reasons and the value.

    `Parser key "trainer.max_epochs": Expected a <class 'int'> (given: banana)` instead of nine lines
    listing every member of `int | None`.
    """
    head, reasons, given = "", [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or any(line.startswith(n) for n in _UNION_NOISE) or "<class 'NoneType'>" in line:
            continue
        if line.startswith("Given value:"):
            given = line.split(":", 1)[1].strip()
        elif line.startswith("- "):
            reasons.append(line[2:])
        elif reasons:
            reasons[-1] += " " + line  # a reason continued on the next line
        elif not head:
            head = line
    out = "; ".join(reasons) or text.strip()
    if "Parser key" in head:
        out = f"{head} {out}"
    if given and not given.startswith("Namespace("):
        out += f" (given: {given})"
    return out


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0", "false", "no")


def run_main(main: Callable[[list[str]], int | None], argv: Sequence[str] | None, prog: str = "") -> int:
    """Call `main(argv)` (without `--debug`); expected failures become one message and exit status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--exec-child"]:  # the sweep's exec shim: its argv is another command's, untouched
        return int(main(args) or 0)
    debug = debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    who = f"{prog}: " if prog else ""
    try:
        return int(main(args) or 0)
    except SystemExit as exit_:
        discard_unstarted_run_dirs()
        if isinstance(exit_.code, str):  # raise SystemExit("error: ...") in older code paths
            text = exit_.code.removeprefix("error: ")
            print(f"{who}error: {text}", file=sys.stderr)
            return EXIT_USAGE
        raise
    except Exception as err:  # noqa: BLE001 - sorted into expected / unexpected below
        discard_unstarted_run_dirs()
        if debug or not isinstance(err, _expected()):
            raise
        print(f"{who}error: {message(err)}", file=sys.stderr)
        return EXIT_USAGE


def cli_entry(prog: str = "") -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a command's `main(argv)` with `run_main`."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            return run_main(main, argv, prog)

        return wrapper

    return wrap


# -- run folders created by a command that then failed ---------------------------------------------------

_NEW_DIRS: list[Path] = []


def new_run_dir(directory: Path) -> Path:
    """mkdir -p `directory`, remembering the topmost folder this call created (see discard_unstarted)."""
    directory = Path(directory)
    top = None
    for parent in [directory, *directory.parents]:
        if parent.exists():
            break
        top = parent
    directory.mkdir(parents=True, exist_ok=True)
    if top is not None:
        _NEW_DIRS.append(top)
    return directory


def _started(folder: Path) -> bool:
    """Whether a run folder holds anything worth keeping: a checkpoint or a result."""
    return any(folder.rglob("*.ckpt")) or any(folder.rglob("result.json"))


def discard_unstarted_run_dirs() -> list[Path]:
    """Remove the folders `new_run_dir` created in this process that hold no checkpoint and no result."""
    removed = []
    while _NEW_DIRS:
        top = _NEW_DIRS.pop()
        if top.is_dir() and not _started(top):
            shutil.rmtree(top, ignore_errors=True)
            removed.append(top)
    return removed


def forget_run_dirs() -> None:
    """A command that ended well keeps its folders."""
    _NEW_DIRS.clear()


# -- warnings nobody can act on --------------------------------------------------------------------------


class _DropTip:
    """A logging filter dropping Lightning's advertisement of its hosted logger (an info record)."""

    def filter(self, record: object) -> bool:
        return "litlogger" not in str(getattr(record, "msg", ""))


def quiet_warnings() -> None:
    """Filter, narrowly (message and module), third-party notices an ordinary fit/test cannot act on."""
    import logging

    warnings.filterwarnings(  # we pass argv to LightningCLI on purpose (main(argv) runs in-process too)
        "ignore", message="LightningCLI's args parameter is intended", module=r"lightning\.pytorch\.cli"
    )
    warnings.filterwarnings(  # Lightning's own use of a torch API torch deprecated; nothing for us to change
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTip) for f in log.filters):
        log.addFilter(_DropTip())
