"""`python -m fgbench <command>`: train and test methods, score saved matrices, check datasets.

Each command module contributes `add_parser(subparsers)`; the registry below keeps `main` free of if/elif.
Bad input ends in one `error: ...` line and exit status 2; add --debug (or set FGBENCH_DEBUG=1) for the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fgbench.errors import cli_entry, forget_run_dirs, quiet_warnings

# command modules, each with add_parser(subparsers) setting `func`
COMMANDS: list[str] = ["fgbench.evaluation.cli", "fgbench.data.cli"]

# subcommands handled by LightningCLI (training runs), with their one-line description for --help
LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "train a method on a dataset, then test it and write result.json (see fit --help)",
    "validate": "score a checkpoint on the validation split (see validate --help)",
    "test": "score a checkpoint on the test split and write result.json (see test --help)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fgbench",
        description=__doc__.split("\n")[0].split(": ", 1)[1],
        epilog="Add --debug (or set FGBENCH_DEBUG=1) to see the traceback of an error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in LIGHTNING_COMMANDS.items():  # listed for --help; main hands them to LightningCLI
        sub.add_parser(name, help=text, add_help=False)
    for mod in COMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return parser


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from fgbench.train_cli import run

        quiet_warnings()
        code = run(argv)
        forget_run_dirs()
        return code
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
