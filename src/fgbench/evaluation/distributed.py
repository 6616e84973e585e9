"""Cross-device helpers: gather features with their dataset indices, de-duplicate, and sum statistics.

DistributedSampler pads the last batch with repeated items, so per-rank metrics would count them twice
(docs/protocols.md §6.3). Features are gathered with their dataset index, de-duplicated and put back in
dataset order, and the result must hold every index exactly once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(t: Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum a tensor over ranks (identity on one process); returns it on its original device."""
    if world()[1] == 1:
        return t
    dev = t.device
    x = t.to(_comm_device(t)).contiguous()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(dev)


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate along dim 0 the tensors of all ranks (their first dims may differ)."""
    if world()[1] == 1:
        return t
    dev = t.device
    x = t.to(_comm_device(t)).contiguous()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world()[1])]
    dist.all_gather(sizes, n)
    n_max = int(max(int(s) for s in sizes))
    padded = x.new_zeros((n_max, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes, strict=True)]).to(dev)


def gather_by_index(index: Tensor, tensors: dict[str, Tensor], n_expected: int) -> dict[str, Tensor]:
    """Gather per-item tensors from every rank, drop padded duplicates and order them by dataset index.

    `index` holds each local item's dataset index. Raises if, after de-duplication, the indices are not
    exactly 0..n_expected-1 (docs/protocols.md §0, completeness).
    """
    idx = all_gather_cat(index.long())
    gathered = {k: all_gather_cat(v) for k, v in tensors.items()}
    order = torch.argsort(idx, stable=True)
    idx_sorted = idx[order]
    first = torch.ones_like(idx_sorted, dtype=torch.bool)
    first[1:] = idx_sorted[1:] != idx_sorted[:-1]
    keep = order[first]
    uniq = idx_sorted[first]
    if uniq.numel() != n_expected or not torch.equal(uniq.cpu(), torch.arange(n_expected)):
        have = set(uniq.tolist())
        missing = [i for i in range(n_expected) if i not in have][:10]
        extra = [i for i in uniq.tolist() if i < 0 or i >= n_expected][:10]
        raise ValueError(
            f"gathered {uniq.numel()} distinct items, expected {n_expected}"
            + (f"; missing indices {missing}" if missing else "")
            + (f"; out-of-range indices {extra}" if extra else "")
        )
    return {k: v[keep] for k, v in gathered.items()}
