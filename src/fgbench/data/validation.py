"""Bad-input rules shared by every loader (docs/data/README.md).

Errors name the dataset, the file, the entry and the field; nothing is skipped silently.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("fgbench.data")

MAX_LISTED = 20


class DatasetError(Exception):
    """Base class of every data error raised by fgbench loaders."""


class DatasetFormatError(DatasetError, ValueError):
    """A malformed annotation: says which file, which entry or line, which field and what was expected."""

    def __init__(
        self,
        file: Path | str,
        problem: str,
        *,
        where: str | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        parts = [f"{file}"]
        if where is not None:
            parts.append(where)
        if field is not None:
            parts.append(f"field {field!r}")
        msg = ": ".join([", ".join(parts), problem])
        if expected is not None:
            msg += f" (expected {expected})"
        super().__init__(msg)
        self.file, self.where, self.field, self.expected = str(file), where, field, expected


class DatasetQuirkError(DatasetFormatError):
    """A quirk of the real files, refused because the DataModule runs with `strict=True`."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A missing root or annotation file; the message shows the expected layout."""


class MissingFilesError(DatasetError, FileNotFoundError):
    """Referenced files that do not exist (images, feature files); lists the first ones and the count."""

    def __init__(self, dataset: str, split: str, missing: Sequence[Path | str], total: int, hint: str = ""):
        shown = "\n  ".join(str(p) for p in list(missing)[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        msg = (
            f"{dataset} [{split}]: {len(missing)} of {total} referenced files are missing:\n  {shown}{more}\n"
            "Fix the dataset folder, or pass skip_missing=True to drop the affected samples, queries and "
            "gallery items (results are then not comparable with the papers; n_missing goes into "
            "result.json)."
        )
        if hint:
            msg += f"\n{hint}"
        super().__init__(msg)
        self.missing = [str(p) for p in missing]


class UnreadableFilesError(MissingFilesError):
    """Referenced images that exist but cannot be decoded (with any missing ones of the same split)."""

    def __init__(
        self,
        dataset: str,
        split: str,
        missing: Sequence[Path | str],
        unreadable: Mapping[str, str],
        total: int,
        hint: str = "",
    ):
        absent = [p for p in missing if str(p) not in unreadable]
        bad = list(unreadable.items())
        shown = "\n  ".join(f"{p} ({why})" for p, why in bad[:MAX_LISTED])
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        msg = f"{dataset} [{split}]: {len(bad)} of {total} referenced images cannot be decoded:\n  "
        msg += f"{shown}{more}\n"
        if absent:
            listed = "\n  ".join(str(p) for p in absent[:MAX_LISTED])
            msg += f"and {len(absent)} are missing:\n  {listed}\n"
        msg += (
            "Replace the files, or pass skip_missing=True to drop the affected samples, queries and gallery "
            "items (results are then not comparable with the papers; n_unreadable and n_missing go into "
            "result.json)."
        )
        if hint and absent:
            msg += f"\n{hint}"
        DatasetError.__init__(self, msg)
        self.missing = [str(p) for p in missing]
        self.unreadable = dict(unreadable)


class ImageVerifier(Protocol):
    """What `find_missing` consults while a DataModule verifies its images (fgbench.data.images)."""

    def unreadable(self, present: Mapping[Path, os.stat_result]) -> set[Path]: ...

    def claim(self, split: str, missing: Iterable[Path | str]) -> dict[str, str]: ...


# set by RetrievalDataModule.setup (verify_images=True) around load(): find_missing then also returns the
# files that exist but cannot be decoded, so every loader drops or refuses them like missing ones
IMAGE_CHECK: ContextVar[ImageVerifier | None] = ContextVar("fgbench_image_check", default=None)
# set by RetrievalDataModule.setup around load(): warn_counts records there the expected counts each split
# was compared with (they can depend on the configuration, e.g. feature_source), for `data check`
EXPECTED_LOG: ContextVar[dict[str, dict[str, int | None]] | None] = ContextVar(
    "fgbench_expected_log", default=None
)


def not_found(dataset: str, path: Path, layout: str, hint: str | None = None) -> DatasetNotFoundError:
    """Build the error for a missing root or annotation file, with the expected tree."""
    msg = f"{dataset}: {path} not found.\nExpected layout under the dataset root:\n{layout.rstrip()}"
    if hint:
        msg += f"\n{hint}"
    return DatasetNotFoundError(msg)


def read_json(path: Path, dataset: str) -> Any:
    """Parse a JSON file; invalid JSON names the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(path, f"not UTF-8 text ({err})", expected="a UTF-8 JSON file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(
            path, f"invalid JSON: {err.msg}", where=f"line {err.lineno}, column {err.colno}"
        ) from None


def require(
    record: Any,
    key: str,
    types: type | tuple[type, ...],
    *,
    file: Path | str,
    where: str,
    nonempty: bool = False,
) -> Any:
    """Return record[key], checking that the record is a dict, the key exists and the value has the type."""
    if not isinstance(record, Mapping):
        raise DatasetFormatError(file, f"entry is {type(record).__name__}", where=where, expected="an object")
    if key not in record:
        raise DatasetFormatError(file, "missing field", where=where, field=key)
    value = record[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise DatasetFormatError(file, "wrong type bool", where=where, field=key, expected=_names(types))
    if not isinstance(value, types):
        raise DatasetFormatError(
            file, f"wrong type {type(value).__name__}", where=where, field=key, expected=_names(types)
        )
    if nonempty and (len(value) == 0 or (isinstance(value, str) and not value.strip())):
        raise DatasetFormatError(file, "empty value", where=where, field=key, expected="non-empty")
    return value


def _names(types: type | tuple[type, ...]) -> str:
    ts = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in ts)


def find_missing(paths: Iterable[Path]) -> list[Path]:
    """Stat every path; return those that do not exist (in input order, de-duplicated).

    While an image check is active (IMAGE_CHECK), images that exist but cannot be decoded are returned too.
    """
    check = IMAGE_CHECK.get()
    seen: dict[Path, None] = {}
    missing = []
    present: dict[Path, os.stat_result] = {}
    for p in paths:
        if p in seen:
            continue
        seen[p] = None
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            missing.append(p)
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(p)
        elif check is not None:
            present[p] = st
    if check is None or not present:
        return missing
    bad = check.unreadable(present)
    if not bad:
        return missing
    lost = bad.union(missing)
    return [p for p in seen if p in lost]


def handle_missing(
    dataset: str, split: str, missing: Sequence[Path], total: int, skip_missing: bool, hint: str = ""
) -> None:
    """Apply the missing-file rule: raise, or (skip_missing) warn with the counts.

    Unreadable images (returned by find_missing under an active image check) are named as such.
    """
    if not missing:
        return
    check = IMAGE_CHECK.get()
    bad = check.claim(split, missing) if check is not None else {}
    if not skip_missing:
        if bad:
            raise UnreadableFilesError(dataset, split, missing, bad, total, hint)
        raise MissingFilesError(dataset, split, missing, total, hint)
    absent = [p for p in missing if str(p) not in bad]
    if absent:
        log.warning(
            "%s [%s]: skip_missing=True drops %d of %d referenced files (first: %s); "
            "results are not comparable with the papers",
            dataset,
            split,
            len(absent),
            total,
            absent[0],
        )
    if bad:
        first, why = next(iter(bad.items()))
        log.warning(
            "%s [%s]: skip_missing=True drops %d of %d referenced images that cannot be decoded "
            "(first: %s: %s); results are not comparable with the papers",
            dataset,
            split,
            len(bad),
            total,
            first,
            why,
        )


def warn_counts(
    dataset: str, split: str, found: Mapping[str, int], expected: Mapping[str, int | None]
) -> list[str]:
    """Compare found counts with the documented ones (docs/data/); warn for each difference and return the
    warnings."""
    record = EXPECTED_LOG.get()
    if record is not None:
        record.setdefault(split, {}).update(expected)
    out = []
    for key, exp in expected.items():
        if exp is None or key not in found:
            continue
        if int(found[key]) != int(exp):
            msg = f"{dataset} [{split}]: expected {exp} {key}, found {found[key]}"
            log.warning(msg)
            out.append(msg)
    return out


# -- quirks of the real files ---------------------------------------------------------------------------
MAX_EXAMPLES = 5  # first examples kept per split and kind


@dataclass(frozen=True)
class QuirkKind:
    """One kind of irregular entry the authors' files contain, and how it is read.

    `official`: what the dataset's reference loader does with it; `fgbench`: what fgbench does (the same,
    unless the docs say why not). Both appear in the dataset's docs page ("Quirks") and in `data check`.
    """

    kind: str
    description: str
    official: str
    fgbench: str


@dataclass
class QuirkExample:
    """Where one quirky entry is: file, entry index or line, field, and its value (shortened)."""

    file: str
    where: str
    field: str | None
    value: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "where": self.where, "field": self.field, "value": self.value}


@dataclass
class _Tally:
    count: int = 0
    examples: list[QuirkExample] = field(default_factory=list)


class QuirkLog:
    """Counts each kind of quirk per split and keeps its first examples; `strict` turns a quirk into an error.

    Loaders call `note()` for every quirky entry they accept, so `data check`, the run log and result.json
    say how many of each kind the data holds. Kinds must be declared by the DataModule (`quirk_kinds`), so
    every reported kind is documented.
    """

    def __init__(self, dataset: str, kinds: Iterable[QuirkKind] = (), strict: bool = False) -> None:
        self.dataset = dataset
        self.kinds = {k.kind: k for k in kinds}
        self.strict = strict
        self._tallies: dict[str, dict[str, _Tally]] = {}

    def note(
        self, split: str, kind: str, file: Path | str, where: str, field: str | None, value: Any
    ) -> None:
        """Record one quirky entry (or raise DatasetQuirkError under strict)."""
        if kind not in self.kinds:
            raise KeyError(f"{self.dataset}: quirk kind {kind!r} is not declared in quirk_kinds")
        shown = _short(value)
        if self.strict:
            raise DatasetQuirkError(
                file,
                f"{self.kinds[kind].description}: {shown} (strict=True refuses quirks of the real files; "
                "without it this entry is read as the official code reads it)",
                where=where,
                field=field,
            )
        tally = self._tallies.setdefault(split, {}).setdefault(kind, _Tally())
        tally.count += 1
        if len(tally.examples) < MAX_EXAMPLES:
            tally.examples.append(QuirkExample(str(file), where, field, shown))

    def count(self, split: str, kind: str) -> int:
        return self._tallies.get(split, {}).get(kind, _Tally()).count

    def report(self) -> dict[str, dict[str, dict[str, Any]]]:
        """{split: {kind: {"count", "description", "fgbench", "examples": [...]}}} (JSON-ready)."""
        return {
            split: {
                kind: {
                    "count": t.count,
                    "description": self.kinds[kind].description,
                    "fgbench": self.kinds[kind].fgbench,
                    "examples": [e.as_dict() for e in t.examples],
                }
                for kind, t in kinds.items()
            }
            for split, kinds in self._tallies.items()
        }

    def summary_lines(self) -> list[str]:
        """One line per split and kind: the count, what it is, what fgbench did and the first example."""
        lines = []
        for split, kinds in self._tallies.items():
            for kind, t in kinds.items():
                k = self.kinds[kind]
                ex = t.examples[0]
                at = f"{ex.file}, {ex.where}" + (f", field {ex.field!r}" if ex.field else "")
                lines.append(
                    f"{self.dataset} [{split}]: {t.count} x {kind} ({k.description}; {k.fgbench}); "
                    f"first: {at}: {ex.value}"
                )
        return lines


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
