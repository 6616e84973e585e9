"""benchmarks/shortlist_recall.py on a 2-step TERAN run (globals trained) of a MINI synth-scenes: the exact
rows agree whichever walk, and a shortlist as large as both galleries re-scores everything, so it is exact."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType

import pytest
from test_method_racg import SCENES, SYNTH
from test_method_teran import cli_run as teran_run

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def shortlist_recall(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    import shortlist_recall

    return shortlist_recall


def test_shortlist_recall_on_a_trained_run(tmp_path: Path, shortlist_recall: ModuleType) -> None:
    data = ["--data", SYNTH.format("Scenes"), "--data.root", str(tmp_path / "data")]
    data += ["--data.sizes", json.dumps(SCENES), "--model.init_args.global_aux_loss", "true"]
    run = Path(teran_run(tmp_path / "t", data)["run_dir"])
    out = tmp_path / "sl.csv"
    assert shortlist_recall.main([str(run), "--ks", "1,15", "--out", str(out)]) == 0

    with open(out, newline="") as f:
        rows = {r["setting"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["exact", "exact, two walks", "shortlist k=1", "shortlist k=15"]
    keys = shortlist_recall.KEYS
    # 3 test images, 15 captions: k=15 re-scores every pair of both directions with the same alignment
    for setting in ("exact, two walks", "shortlist k=15"):
        assert [rows[setting][k] for k in keys] == [rows["exact"][k] for k in keys], setting
        assert rows[setting]["rsum_vs_exact"] == "+0.00"
    assert rows["shortlist k=15"]["pairs_rescored"] == f"{2 * 15 * 3:,}"  # i2t 3 x 15, t2i 15 x 3
    assert "t2i re-scores every image" in rows["shortlist k=15"]["note"]
    assert rows["shortlist k=1"]["pairs_rescored"] == f"{3 + 15:,}"
    assert "evaluator warnings" not in rows["exact"]["note"]
