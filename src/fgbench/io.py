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


def strict_json(obj: Any, what: str = "JSON", indent: int | None = 2) -> str:
    """`obj` as standard JSON text: NaN or infinity (which JSON cannot hold) is an error naming `what`."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    except ValueError as err:
        raise ValueError(
            f"{what}: refusing to write NaN or infinity, which is not valid JSON ({err})"
        ) from None


NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: Path, what: str) -> np.ndarray:
    """A numeric array from a .npy file, with what is wrong named: not a .npy, pickled objects, truncated."""
    with open(path, "rb") as f:
        head = f.read(len(NPY_MAGIC))
        if head != NPY_MAGIC:
            shown = head.decode("latin-1").encode("unicode_escape").decode()
            raise ValueError(
                f"{what}: {path} is not a NumPy .npy file (it starts with {shown!r}, not the .npy header); "
                "save the array with numpy.save"
            )
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
        except (ValueError, EOFError, SyntaxError) as err:
            raise ValueError(f"{what}: {path} has a damaged .npy header ({err})") from None
        if dtype.hasobject:
            raise ValueError(
                f"{what}: {path} holds Python objects (dtype {dtype}), which would need unpickling; "
                "save a numeric array"
            )
        need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        have = path.stat().st_size - f.tell()
    if have < need:
        raise ValueError(
            f"{what}: {path} is truncated: its header promises shape {tuple(shape)} of {dtype} "
            f"({need} bytes) but only {have} bytes follow; write the file again"
        )
    return np.load(path, allow_pickle=False)


def _torch_reason(err: BaseException) -> tuple[str, bool]:
    """(the reason torch.load gave, whether the file is readable but holds non-tensor objects).

    torch's refusal text also explains how to load the file unsafely; only the reason is kept.
    """
    import pickle

    text = str(err)
    if "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1].strip()
        reason = next((ln.strip() for ln in after.splitlines() if ln.strip()), "refused by torch.load")
        return reason.split(". ")[0].rstrip("."), True
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    refused = isinstance(err, pickle.UnpicklingError) and "weights_only" in text.lower()
    if "weights_only" in first.lower() or "weights only" in first.lower():  # the advice line, not a reason
        first = type(err).__name__
    return first.split(". ")[0].rstrip("."), refused


def load_array(path: str | Path, what: str) -> torch.Tensor:
    """Load a `.npy` (no pickles) or `.pt` (weights_only) array; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{what}: {path} is empty (0 bytes); write the array again")
    if path.suffix == ".npy":
        arr = _load_npy(path, what)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr)
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError and others
            reason, refused = _torch_reason(err)
            if refused:
                raise ValueError(
                    f"{what}: {path} holds objects other than tensors ({reason}); save a single tensor "
                    "with torch.save(tensor, path)"
                ) from None
            raise ValueError(
                f"{what}: {path} is damaged or not a PyTorch tensor file ({reason}); write it again "
                "with torch.save(tensor, path)"
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
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); use an intact copy")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError and friends
        reason, refused = _torch_reason(err)
        if refused:
            raise ValueError(
                f"checkpoint {path} holds objects fgbench does not load ({reason}); fgbench never unpickles "
                "arbitrary objects, which can run code: use a checkpoint written by `python -m fgbench fit`"
            ) from None
        raise ValueError(
            f"checkpoint {path} is damaged or not a PyTorch checkpoint ({reason}); "
            "use an intact copy, e.g. the run's checkpoints/last.ckpt"
        ) from None
