"""`python -m fgbench <command>`: fit|validate|test (LightningCLI), evaluate scores, check a dataset.

Each command module contributes `add_parser(subparsers)`; the registry below keeps `main` free of if/elif.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command modules, each with add_parser(subparsers) setting `func`
COMMANDS: list[str] = ["fgbench.evaluation.cli", "fgbench.data.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fgbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in COMMANDS:
        importlib.import_module(mod).add_parser(sub)
    return parser


# subcommands handled by LightningCLI (training runs)
LIGHTNING_COMMANDS = frozenset({"fit", "validate", "test"})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from fgbench.train_cli import run

        return run(argv)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
