"""Host-device synchronisation probe of the training benchmark (`train_throughput.py`'s `syncs/step`
columns): `SyncProbe`, a dispatch mode that records every op that makes the host wait for a GPU
(`.item()`/`float()`/`bool()` of a tensor, `nonzero`/boolean-mask indexing, `masked_select`,
`pack_padded_sequence`'s host lengths, `unique`, device-to-host copies) with the line that issued it, so it
works on the CPU too; on a GPU `cuda_sync_debug` adds CUDA's own count.
"""

from __future__ import annotations

import contextlib
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from _bench import ROOT
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# ops whose CUDA implementation makes the host wait for the device
SYNC_OPS: dict[Any, str] = {
    _aten._local_scalar_dense.default: "item()/float()/bool() of a tensor",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._pack_padded_sequence.default: "pack_padded_sequence (host lengths)",
    _aten._unique2.default: "unique",
    _aten.unique_consecutive.default: "unique_consecutive",
    _aten.unique_dim.default: "unique",
    _aten.repeat_interleave.Tensor: "repeat_interleave without output_size",
    _aten.equal.default: "torch.equal",
}
# indexing ops that sync when an index is a boolean mask (its nonzero is taken inside the kernel)
INDEX_OPS = {
    _aten.index.Tensor,
    _aten.index_put.default,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}
_HERE = str(ROOT)


# host-side work that only looks like a sync on a CPU run: Adam/AdamW keep their step counters on the host
# (unless capturable/fused), an RNN reads PackedSequence.batch_sizes (host by contract), and
# pack_padded_sequence works on host lengths once they were copied (the copy is `_pack_padded_sequence`)
HOST_SIDE = ("/torch/optim/", "/torch/nn/utils/rnn.py", "/torch/nn/modules/rnn.py")
# torch's own plumbing between a Python caller and the op (never the caller that decides to sync)
PLUMBING = (
    "/torch/_tensor.py",
    "/torch/overrides.py",
    "/torch/utils/_python_dispatch.py",
    "/torch/_ops.py",
    "/torch/_compile.py",
    "/torch/_dynamo/",
)


def _short(path: str, line: int) -> str:
    if path.startswith(_HERE) and "/.venv/" not in path:
        return f"{Path(path).relative_to(_HERE)}:{line}"
    return f"{path.split('site-packages/')[-1]}:{line}"


def _site(func: Any) -> str | None:
    """Where a syncing op comes from: the innermost calling frame (a library's, e.g. transformers') and the
    innermost frame of the repository or Lightning; None when that innermost frame is host-side torch code
    (HOST_SIDE), which never waits for a GPU."""
    stack = [fr for fr in traceback.extract_stack() if fr.filename != __file__]
    callers = [fr for fr in stack if not any(p in fr.filename for p in PLUMBING)]
    if not callers:
        return "?"
    inner = callers[-1]
    if func is not _aten._pack_padded_sequence.default and any(h in inner.filename for h in HOST_SIDE):
        return None
    ours = next(
        (
            fr
            for fr in reversed(callers)
            if (fr.filename.startswith(_HERE) and "/.venv/" not in fr.filename)
            or "/lightning/" in fr.filename
        ),
        None,
    )
    if ours is None:
        return _short(inner.filename, inner.lineno or 0)
    if ours is inner:
        return _short(ours.filename, ours.lineno or 0)
    return f"{_short(inner.filename, inner.lineno or 0)} via {_short(ours.filename, ours.lineno or 0)}"


class SyncProbe(TorchDispatchMode):
    """Counts the ops of a section that force a host-device synchronisation on a GPU, by call site."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        why = SYNC_OPS.get(func)
        if why is None and func in INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            if any(isinstance(t, Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or []):
                why = "boolean-mask indexing"
        if why is None and func is _aten._to_copy.default and isinstance(args[0], Tensor):
            dev = kwargs.get("device")
            if args[0].device.type == "cuda" and dev is not None and torch.device(dev).type == "cpu":
                why = "device-to-host copy"
        site = _site(func) if why is not None else None
        if site is not None:
            self.found[f"{why} @ {site}"] += 1
        return func(*args, **kwargs)

    @property
    def count(self) -> int:
        return sum(self.found.values())


@contextlib.contextmanager
def cuda_sync_debug(device: torch.device, record: list[str]) -> Iterator[None]:
    """On a GPU, CUDA's own count of synchronising calls in the section (`set_sync_debug_mode("warn")`)."""
    if device.type != "cuda":
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    record.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))
