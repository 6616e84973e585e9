"""Features: what `encode_queries`/`encode_gallery` return (docs/methods.md §0, "Common interface").

Every tensor has the leading dimension n. `tok` is padded to a method-fixed length so that all ranks gather
equal shapes; `index` holds the dataset index, used to de-duplicate and re-order after all_gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

# the dtypes a pairwise method may store its token sets in (`store_dtype`); they are scored in fp32
STORE_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float16": torch.float16,
}


@dataclass
class Features:
    """A set of encoded items: global vectors and/or token (region, word, grid) sets."""

    index: Tensor  # Long[n] dataset index
    glob: Tensor | None = None  # [n, d] L2-normalised global vector
    tok: Tensor | None = None  # [n, T, e] token / region / grid set
    mask: Tensor | None = None  # Bool[n, T] True = valid
    aux: dict[str, Tensor] = field(default_factory=dict)  # extra per-item tensors, leading dim n

    def __len__(self) -> int:
        return int(self.index.numel())

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor view of every field (aux entries prefixed `aux.`)."""
        out = {"index": self.index}
        for name in ("glob", "tok", "mask"):
            t = getattr(self, name)
            if t is not None:
                out[name] = t
        out.update({f"aux.{k}": v for k, v in self.aux.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Features:
        aux = {k[4:]: v for k, v in tensors.items() if k.startswith("aux.")}
        return cls(
            index=tensors["index"],
            glob=tensors.get("glob"),
            tok=tensors.get("tok"),
            mask=tensors.get("mask"),
            aux=aux,
        )

    def map(self, fn) -> Features:  # noqa: ANN001 - a tensor -> tensor function
        return Features.from_tensors({k: fn(v) for k, v in self.tensors().items()})

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        if not parts:
            raise ValueError("Features.cat of an empty list")
        keys = parts[0].tensors().keys()
        return Features.from_tensors({k: torch.cat([p.tensors()[k] for p in parts]) for k in keys})

    def slice(self, start: int, stop: int) -> Features:
        return self.map(lambda t: t[start:stop])

    def take(self, idx: Tensor) -> Features:
        return self.map(lambda t: t[idx.to(t.device)])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Features:
        """Move every tensor; `dtype` applies to floating-point tensors only (index and mask stay)."""

        def mv(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self.map(mv)


def slots_used(mask: Tensor) -> int:
    """Slots up to the last one valid in any row of `mask` [n, S] (at least 1): later slots are padding.
    One host sync (evaluation and re-ranking only)."""
    valid = mask.any(0).nonzero()
    return int(valid.max()) + 1 if valid.numel() else 1


def cut_padding(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """x [n, S, ...] and mask [n, S] cut after the last slot valid in any row (exact wherever masks apply)."""
    n = slots_used(mask)
    return x[:, :n], mask[:, :n]


def pad_slots(x: Tensor, mask: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """x [n, S, e] and mask [n, S] zero-padded (masked) to `slots` >= S slots, so that sets encoded in
    different batches gather with equal shapes."""
    return F.pad(x, (0, 0, 0, slots - x.shape[1])), F.pad(mask, (0, slots - mask.shape[1]), value=False)


def extents(mask: Tensor) -> Tensor:
    """[n] slots up to each row's last valid one (0 for an empty row): the row's length without padding."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * pos).amax(1) if mask.shape[1] else mask.new_zeros(len(mask), dtype=torch.long)


def length_buckets(mask: Tensor) -> list[tuple[Tensor, int]]:
    """Rows of `mask` [n, S] grouped by extent: (row indices, slots) per distinct extent, shortest first.

    Each group is cut to its own extent (at least 1 slot), so a group's padded work is its real work when
    masks are prefixes (right padding); one host sync.
    """
    ext = extents(mask)
    values, inverse = torch.unique(ext, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=len(values)).tolist()
    return [(idx, max(1, int(v))) for idx, v in zip(order.split(counts), values.tolist(), strict=True)]
