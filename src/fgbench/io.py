"""Atomic file writes and safe loading of arrays a user hands the suite (no unpickling)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file in the same folder, then rename: readers never see a partial file.

    The file gets the permissions of a plainly created one (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def load_array(path: str | Path, what: str) -> torch.Tensor:
    """Load a `.npy` (no pickles) or `.pt` (weights_only) array; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    if path.suffix == ".npy":
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except ValueError as err:  # object arrays need pickles: refused
            raise ValueError(
                f"{what}: {path} cannot be loaded without unpickling ({err}); save a numeric array"
            ) from None
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError and others
            raise ValueError(
                f"{what}: {path} is not a plain tensor file loadable with weights_only=True ({err})"
            ) from None
        if not isinstance(obj, torch.Tensor):
            raise ValueError(f"{what}: {path} holds a {type(obj).__name__}, expected a single tensor")
        return obj
    raise ValueError(f"{what}: {path} has extension {path.suffix!r}; expected .npy or .pt")


def check_checkpoint(path: str | Path) -> None:
    """Refuse a checkpoint that cannot be loaded with torch.load(weights_only=True).

    Lightning checkpoints of fgbench methods hold tensors, primitives and allow-listed config dataclasses
    only; anything else would need arbitrary unpickling, which can run code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError and friends
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} cannot be loaded safely (torch.load weights_only=True refused it: {first}). "
            "fgbench never unpickles arbitrary objects; re-save the checkpoint from a trusted copy."
        ) from None
