"""`python -m fgbench data check NAME --root PATH`: validate a dataset folder before a long run.

Prints, per split, the images, captions, identities or classes, queries, gallery items and missing files
found, beside the counts DATASETS.md expects; `--json` writes {split: {images, captions, labels, queries,
gallery, missing}}. Exit status 1 when files are missing, 2 when the folder cannot be read at all.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from fgbench.data.validation import DatasetError
from fgbench.io import atomic_write_json
from fgbench.registry import DATAMODULES

KEYS = ("images", "captions", "labels", "queries", "gallery", "missing")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check a dataset folder: data check NAME --root DIR")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a dataset folder and print its counts")
    c.add_argument("name", help="registered dataset name, e.g. rstpreid")
    c.add_argument("--root", required=True, help="the folder holding the dataset folder")
    c.add_argument("--json", dest="json_out", help="write the counts to this JSON file")
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a DataModule argument, e.g. --set feature_source=precomp (repeatable)",
    )
    c.set_defaults(func=check)


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def check(args: argparse.Namespace) -> int:
    console = Console()
    cls = DATAMODULES.get(args.name)
    try:
        dm = cls(root=args.root, skip_missing=True, **_overrides(args.overrides))
    except TypeError as err:  # an unknown --set KEY: one message, not a traceback
        raise SystemExit(f"error: {args.name}: --set {err}") from None
    try:
        stats = dm.check()
    except (DatasetError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{args.name}: {err}[/red]")
        return 2
    expected: dict[str, dict[str, int | None]] = getattr(cls, "expected", {}) or {}
    table = Table(title=f"{args.name} at {args.root} (found / expected)")
    table.add_column("split")
    for k in KEYS:
        table.add_column(k, justify="right")
    for split, counts in stats.items():
        exp = expected.get(split, {})
        cells = []
        for k in KEYS:
            found = counts.get(k, 0)
            want = exp.get(k)
            mark = "" if want is None or want == found else f" [yellow]/ {want}[/yellow]"
            cells.append(f"{found}{mark}")
        table.add_row(split, *cells)
    console.print(table)
    if args.json_out:
        atomic_write_json(args.json_out, {s: {k: int(c.get(k, 0)) for k in KEYS} for s, c in stats.items()})
        console.print(f"wrote {args.json_out}")
    return 1 if any(c.get("missing", 0) for c in stats.values()) else 0
