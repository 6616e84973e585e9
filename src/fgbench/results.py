"""Run records: result.json in each run directory, with the provenance a leaderboard needs.

Provenance: config hash, git commit and dirty flag of the suite, library versions, device, precision, wall
time. result.json is written atomically, so a reader (or a resumed sweep) never sees half a record.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from fgbench.io import atomic_write_json

SUITE_ROOT = Path(__file__).resolve().parents[2]
RESULT_FILE = "result.json"  # the run's own result (written by `fit`, confirmed by a plain re-test)
RESULT_GLOB = "result*.json"  # with the variants a test files beside it: result.<variant>.json


def result_file(variant: str = "") -> str:
    """The file of a run's result: result.json, or result.<variant>.json for a test-time variant."""
    return f"result.{variant}.json" if variant else RESULT_FILE


def is_result_file(name: str) -> bool:
    """result.json or result.<variant>.json (not the hidden temp files of an atomic write)."""
    return name == RESULT_FILE or (name.startswith("result.") and name.endswith(".json"))


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of a resolved config, 12 hex digits (names the run directory)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_dir(root: str | Path, dataset: str, method: str, profile: str, seed: int, chash: str) -> Path:
    """runs/<dataset>/<method>/<profile>/seed<k>-<hash>/ (never a timestamp: reruns land in the same cell)."""
    return Path(root) / dataset / method / profile / f"seed{seed}-{chash}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=SUITE_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Suite commit, dirty flag and library versions (cached per process)."""
    import lightning
    import timm
    import transformers

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit or "unknown",
        "git_dirty": None if status is None else bool(status),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "transformers": transformers.__version__,
            "timm": timm.__version__,
        },
    }


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def write_result(path: str | Path, record: dict[str, Any]) -> Path:
    """Write a result record atomically."""
    return atomic_write_json(Path(path), record)


def read_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a valid result record ({err})") from None
