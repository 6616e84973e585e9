"""`python -m fgbench data check NAME --root PATH`: validate a dataset folder before a long run.

Prints, per split row (and per-category rows such as "val/dress"), every count the loader reports beside
the count it expects; the quirks of the real files (kind, count, what fgbench does, first example); the
missing and unreadable files; and each warning once. `--verify-images` decodes every referenced image.
`--json OUT` writes all of it. `--set KEY=VALUE` passes a DataModule argument (`--set strict=true` turns
every quirk into an error). Exit status: 0 ok, 1 files missing or unreadable, 2 the data cannot be read.
"""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fgbench.data.module import RetrievalDataModule
from fgbench.data.validation import DatasetError, MissingFilesError
from fgbench.io import atomic_write_json
from fgbench.registry import DATAMODULES

# column order of the counts table; any other count a loader reports follows, then the file problems
FIRST_KEYS = ("images", "captions", "labels", "queries", "gallery", "triplets", "image_sets")
LAST_KEYS = ("missing", "unreadable")
SHOWN_EXAMPLES = 3  # file examples per split in the terminal (--json has all of them)
PIPE_WIDTH = 200
EXIT_OK, EXIT_FILES, EXIT_UNREADABLE_DATA = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check a dataset folder: data check NAME --root DIR")
    dsub = p.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="validate a dataset folder and print its counts")
    c.add_argument("name", help="registered dataset name, e.g. rstpreid")
    c.add_argument("--root", required=True, help="the folder holding the dataset folder")
    c.add_argument("--json", dest="json_out", help="write the whole report to this JSON file")
    c.add_argument(
        "--verify-images",
        action="store_true",
        help="decode every referenced image and report the unreadable ones (cached per file)",
    )
    c.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a DataModule argument, e.g. --set feature_source=precomp or --set strict=true (repeatable)",
    )
    c.set_defaults(func=check)


class UsageError(Exception):
    """A bad --set item or DataModule argument."""


def _overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _accepted(cls: type) -> set[str] | None:
    """The keyword arguments the DataModule's constructors accept (None: any, through **kwargs only)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


class _Collect(logging.Handler):
    """Keeps the fgbench.data warnings emitted while loading, to print each once after the tables."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_warnings() -> Iterator[_Collect]:
    """Route fgbench.data warnings to the report only (not also to stderr) while the dataset loads."""
    logger = logging.getLogger("fgbench.data")
    handler, propagate = _Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _columns(rows: dict[str, dict[str, Any]]) -> list[str]:
    present = {k for r in rows.values() for part in r.values() for k in part}
    middle = sorted(present - set(FIRST_KEYS) - set(LAST_KEYS))
    return [k for k in FIRST_KEYS if k in present] + middle + list(LAST_KEYS)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build_report(
    dm: RetrievalDataModule, name: str, root: str, options: dict[str, Any], verified: bool
) -> dict[str, Any]:
    """What `data check` shows, JSON-ready: counts found and expected per row, quirks, files, warnings."""
    data = dm.loaded
    class_expected = dm.expected
    rows = {}
    for row, counts in data.stats.items():
        found = {k: int(v) for k, v in counts.items() if _is_count(v)}
        found.setdefault("missing", len(data.missing.get(row, [])))
        found.setdefault("unreadable", len(data.unreadable.get(row, {})))
        expected = data.expected.get(row, class_expected.get(row, {}))
        rows[row] = {"found": found, "expected": {k: v for k, v in expected.items() if v is not None}}
    return {
        "dataset": name,
        "root": root,
        "options": options,
        "images_verified": verified,
        "rows": rows,
        "quirks": data.quirks,
        "n_missing": {s: len(p) for s, p in data.missing.items()},
        "n_unreadable": {s: len(p) for s, p in data.unreadable.items()},
        "missing": {s: list(p) for s, p in data.missing.items()},
        "unreadable": {s: dict(p) for s, p in data.unreadable.items()},
        "warnings": [],
    }


def _counts_table(report: dict[str, Any]) -> Table:
    rows = report["rows"]
    cols = _columns(rows)
    table = Table(title=f"{report['dataset']} at {escape(report['root'])} (found / expected)")
    table.add_column("split")
    for k in cols:
        table.add_column(k, justify="right")
    for row, r in rows.items():
        cells = []
        for k in cols:
            found, want = r["found"].get(k), r["expected"].get(k)
            if found is None:
                cells.append("" if want is None else f"[red]- / {want}[/red]")
            elif want is None:
                cells.append(f"[red]{found}[/red]" if k in LAST_KEYS and found else str(found))
            else:
                colour = "green" if want == found else "yellow"
                cells.append(f"[{colour}]{found} / {want}[/{colour}]")
        table.add_row(escape(row), *cells)
    return table


def _quirks_table(report: dict[str, Any]) -> Table:
    table = Table(title="quirks of the files (read as the official code reads them)")
    for col in ("split", "kind", "count", "fgbench", "first example"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for split, kinds in report["quirks"].items():
        for kind, q in kinds.items():
            ex = q["examples"][0] if q["examples"] else {}
            at = ", ".join(
                x
                for x in (ex.get("file"), ex.get("where"), ex.get("field") and f"field {ex['field']!r}")
                if x
            )
            first = f"{at}: {ex.get('value')}" if ex else ""
            table.add_row(escape(split), kind, str(q["count"]), escape(q["fgbench"]), escape(first))
    return table


def _files_table(report: dict[str, Any]) -> Table:
    table = Table(title="missing and unreadable files (all of them in --json)")
    for col in ("split", "problem", "count", "first files"):
        table.add_column(col, justify="right" if col == "count" else "left")
    for split, paths in report["missing"].items():
        if paths:
            table.add_row(split, "missing", str(len(paths)), escape("\n".join(paths[:SHOWN_EXAMPLES])))
    for split, bad in report["unreadable"].items():
        if bad:
            shown = [f"{p} ({why})" for p, why in list(bad.items())[:SHOWN_EXAMPLES]]
            table.add_row(split, "unreadable", str(len(bad)), escape("\n".join(shown)))
    return table


def check(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:  # a log file or pipe: room for every column rather than rich's 80
        console = Console(width=PIPE_WIDTH)
    errors = Console(stderr=True, width=None if console.is_terminal else PIPE_WIDTH)

    def fail(err: BaseException) -> None:
        """One message on stderr, naming the dataset once."""
        text = str(err)
        if not text.startswith(f"{args.name}:"):
            text = f"{args.name}: {text}"
        errors.print(f"[red]error: {escape(text)}[/red]")

    try:
        if args.name not in DATAMODULES:
            known = ", ".join(sorted(DATAMODULES.list()))
            raise UsageError(f"unknown dataset {args.name!r}; registered: {known}")
        cls = DATAMODULES.get(args.name)
        options = {
            "skip_missing": True,
            "verify_images": bool(args.verify_images),
            **_overrides(args.overrides),
        }
        accepted = _accepted(cls)
        unknown = sorted(set(options) - accepted) if accepted is not None else []
        if unknown:
            raise UsageError(
                f"--set {unknown[0]!r}: not an argument of {cls.__name__}; known: {sorted(accepted)}"
            )
        dm = cls(root=args.root, **options)
    except (UsageError, TypeError, ValueError) as err:
        fail(err)
        return EXIT_UNREADABLE_DATA
    dm.image_progress = True
    with _collect_warnings() as collected:
        try:
            dm.setup()
        except MissingFilesError as err:  # skip_missing=false was asked for
            fail(err)
            return EXIT_FILES
        except (DatasetError, OSError, ValueError, KeyError) as err:
            fail(err)
            return EXIT_UNREADABLE_DATA
    report = build_report(dm, args.name, args.root, options, bool(dm.verify_images))
    quirk_lines = set(dm.quirks.summary_lines())
    report["warnings"] = [
        w for w in dict.fromkeys([*collected.messages, *dm.loaded.warnings]) if w not in quirk_lines
    ]
    console.print(_counts_table(report))
    if report["quirks"]:
        console.print(_quirks_table(report))
    if any(report["n_missing"].values()) or any(report["n_unreadable"].values()):
        console.print(_files_table(report))
    if not report["images_verified"]:
        console.print("images not decoded (pass --verify-images to find unreadable files)")
    for line in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(line)}")
    if args.json_out:
        atomic_write_json(args.json_out, report)
        console.print(f"wrote {escape(args.json_out)}")
    bad_files = any(report["n_missing"].values()) or any(report["n_unreadable"].values())
    return EXIT_FILES if bad_files else EXIT_OK
