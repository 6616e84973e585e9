"""The quirk log every loader reports through: counts, first examples, strict mode, result.json section."""

from __future__ import annotations

import json
import logging

import pytest

from fgbench.data.module import LoadedData, RetrievalDataModule
from fgbench.data.validation import MAX_EXAMPLES, DatasetQuirkError, QuirkKind, QuirkLog

KINDS = (
    QuirkKind("empty_caption", "an empty caption", "kept as an empty string", "kept as is"),
    QuirkKind("duplicate_entry", "an entry repeated", "both kept", "both kept"),
)


def test_quirk_log_counts_and_keeps_first_examples() -> None:
    q = QuirkLog("toy", KINDS)
    for i in range(MAX_EXAMPLES + 3):
        q.note("train", "empty_caption", "cap.json", f"entry {i}", "captions", "")
    q.note("val", "duplicate_entry", "cap.json", "entry 4", None, {"a": 1})
    report = q.report()
    assert report["train"]["empty_caption"]["count"] == MAX_EXAMPLES + 3
    examples = report["train"]["empty_caption"]["examples"]
    assert [e["where"] for e in examples] == [f"entry {i}" for i in range(MAX_EXAMPLES)]
    assert examples[0] == {"file": "cap.json", "where": "entry 0", "field": "captions", "value": "''"}
    assert report["val"]["duplicate_entry"]["count"] == 1
    assert q.count("val", "empty_caption") == 0
    json.dumps(report)  # JSON-ready
    lines = q.summary_lines()
    assert len(lines) == 2 and "8 x empty_caption" in lines[0] and "cap.json, entry 0" in lines[0]


def test_strict_turns_a_quirk_into_an_error_naming_file_entry_and_field() -> None:
    q = QuirkLog("toy", KINDS, strict=True)
    with pytest.raises(DatasetQuirkError, match=r"cap\.json, entry 3, field 'captions': an empty caption"):
        q.note("train", "empty_caption", "cap.json", "entry 3", "captions", "")


def test_undeclared_kind_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="not declared"):
        QuirkLog("toy", KINDS).note("train", "typo", "f", "entry 0", None, 1)


class ToyDataModule(RetrievalDataModule):
    name = "toy"
    quirk_kinds = KINDS

    def load(self) -> LoadedData:
        self.quirk("test", "duplicate_entry", "ann.json", "entry 1", "id", 7)
        self.quirk("test", "duplicate_entry", "ann.json", "entry 2", "id", 7)
        return LoadedData(train=None, eval_sets={}, stats={"test": {"images": 2}}, warnings=["w"])


def test_datamodule_reports_quirks_once_in_log_and_record(caplog: pytest.LogCaptureFixture) -> None:
    dm = ToyDataModule(root="unused")
    with caplog.at_level(logging.WARNING, logger="fgbench.data"):
        dm.setup()
        dm.setup()  # a second setup (fit then test) reads nothing again and logs nothing again
    lines = [r.getMessage() for r in caplog.records if "duplicate_entry" in r.getMessage()]
    assert len(lines) == 1 and "2 x duplicate_entry" in lines[0]
    record = dm.loaded.record()
    assert record["quirks"]["test"]["duplicate_entry"]["count"] == 2
    assert record["stats"] == {"test": {"images": 2}} and record["warnings"] == ["w"]
    with pytest.raises(DatasetQuirkError):
        ToyDataModule(root="unused", strict=True).setup()
