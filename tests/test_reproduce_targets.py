"""`make reproduce-<dataset>` without the data: a non-zero exit within seconds, printing the dataset's
expected layout and the `fgbench data check` command, before any run directory is made.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.reproduce import data_problem
from experiments.sweep import CONFIGS, config_class

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the running virtual environment: make must not reinstall it


def real_datasets() -> list[str]:
    """The REAL_DATASETS list of the Makefile (each gets a reproduce-<name> target)."""
    match = re.search(r"^REAL_DATASETS := (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile has no REAL_DATASETS line"
    return match.group(1).split()


def test_every_reproduce_target_has_a_config() -> None:
    names = real_datasets()
    assert len(names) == 10
    for name in names:
        assert (CONFIGS / "data" / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("name", real_datasets())
def test_missing_data_names_the_layout(name: str, tmp_path: Path) -> None:
    problem = data_problem(name, tmp_path)
    assert problem is not None
    layout = config_class(CONFIGS / "data" / f"{name}.yaml", "data").layout
    assert layout.strip() and layout.strip() in problem


def test_make_reproduce_without_data_stops_at_once(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cmd = ["make", "-s", "-o", f"{VENV}/.installed-stamp", "reproduce-rstpreid", f"VENV={VENV}",
           f"DATA_ROOT={empty}", f"RUNS={tmp_path / 'runs'}", f"RESULTS={tmp_path / 'results'}"]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "<root>/RSTPReid/data_captions.json" in out and "<root>/RSTPReid/imgs/*.jpg" in out
    assert f"python -m fgbench data check rstpreid --root {empty}" in out
    assert not (tmp_path / "runs").exists()  # nothing started
    # "seconds": the time to import torch and read one folder, with slack for a loaded 2-core machine
    assert elapsed < 90, f"took {elapsed:.0f} s"
