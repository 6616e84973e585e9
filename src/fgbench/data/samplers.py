"""Identity-aware P x K training sampler (the RandomIdentitySampler of person re-id, made DDP-safe).

Each batch holds P = batch_size / K distinct identities with K samples each, so in-batch losses over
identities (ID, SDM, triplet) always see positives. Conventions follow the re-id samplers of
anosorae/IRRA and michuanhaohao/reid-strong-baseline: an identity's samples are shuffled and cut into
chunks of K (an identity with fewer than K samples is padded by drawing with replacement; the remainder
of a longer one is dropped for the epoch).

Unlike those samplers the number of batches is fixed: batches are filled with the identities that have the
most chunks left (random among ties), which reaches the largest possible number of batches of distinct
identities, so `len()` is exact. Under DDP every rank builds the same epoch-seeded list of batches,
shuffles it, keeps a multiple of the world size and takes every `num_replicas`-th batch: the shares are
disjoint and equally long. It subclasses `DistributedSampler` so that Lightning neither wraps it again nor
forgets `set_epoch`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class Resumable:
    """Skips the first `start` indices of the next epoch's order once (mid-epoch resume).

    The training loader sets `start` from a checkpoint; the order itself depends only on (seed, epoch), so
    the resumed epoch continues exactly where the interrupted one stopped.
    """

    start: int = 0

    def _resume(self, indices: Iterator[int]) -> Iterator[int]:
        skip, self.start = self.start, 0
        return itertools.islice(indices, skip, None)


class ShuffleSampler(Resumable, DistributedSampler):
    """The default training sampler: a seeded per-epoch shuffle, split across ranks, resumable mid-epoch.

    Used on one device too, so the order depends on (seed, epoch) only and Lightning never replaces it.
    """

    def __iter__(self) -> Iterator[int]:
        return self._resume(super().__iter__())


class PKSampler(Resumable, DistributedSampler):
    """Yields dataset indices in batches of `batch_size // k` identities x `k` samples.

    Args:
        labels: identity of each dataset item (any hashable ints).
        batch_size: per-device batch size; must be a multiple of `k` and hold at least two identities.
        k: samples per identity in a batch.
        num_replicas, rank: the DDP world size and this rank (default: from torch.distributed, else 1, 0).
        seed: base seed; the epoch set by `set_epoch` is added to it (same on every rank).
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        k: int = 4,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if k < 1 or batch_size % k != 0 or batch_size // k < 2:
            raise ValueError(
                f"PKSampler: batch_size {batch_size} must be a multiple of k={k} holding at least two "
                "identities (batch_size = P x k, P >= 2)"
            )
        num_replicas, rank = _world(num_replicas, rank)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            groups[int(label)].append(i)
        self.groups = [np.asarray(v) for _, v in sorted(groups.items())]
        self.k, self.p = k, batch_size // k
        if len(self.groups) < self.p:
            raise ValueError(
                f"PKSampler: {len(self.groups)} identities cannot fill batches of P={self.p} distinct "
                f"identities (batch_size {batch_size}, k={k})"
            )
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.batches_per_rank = max_batches(self.chunk_counts(), self.p) // num_replicas

    def chunk_counts(self) -> list[int]:
        """Chunks of K each identity contributes per epoch (at least one)."""
        return [max(1, len(g) // self.k) for g in self.groups]

    def __len__(self) -> int:
        return self.batches_per_rank * self.p * self.k

    def __iter__(self) -> Iterator[int]:
        return self._resume(self._epoch_indices())

    def _epoch_indices(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = [self.identity_chunks(g, rng) for g in self.groups]
        batches = [
            np.concatenate([chunks[ident].pop() for ident in batch])
            for batch in fill_batches([len(c) for c in chunks], self.p, rng)
        ]
        order = rng.permutation(len(batches))[: self.batches_per_rank * self.num_replicas]
        for b in order[self.rank :: self.num_replicas]:
            yield from (int(i) for i in batches[b])

    def identity_chunks(self, idx: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Shuffle one identity's samples and cut them into chunks of K (padding a short identity)."""
        if len(idx) < self.k:
            idx = rng.choice(idx, size=self.k, replace=True)
        else:
            idx = rng.permutation(idx)
        n = len(idx) // self.k
        return [idx[j * self.k : (j + 1) * self.k] for j in range(n)]


def fill_batches(counts: Sequence[int], p: int, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Batches of `p` distinct identities, each taking one chunk from the identities with most chunks left.

    Largest-first is optimal for this packing, so the number of batches depends only on `counts`; `rng`
    breaks ties afresh at every step, so equal identities are not always grouped alike (None: by index).
    """

    def tie() -> float:
        return float(rng.random()) if rng is not None else 0.0

    heap = [(-c, tie(), i) for i, c in enumerate(counts) if c > 0]
    heapq.heapify(heap)
    batches: list[list[int]] = []
    while len(heap) >= p:
        taken = [heapq.heappop(heap) for _ in range(p)]
        batches.append([i for _, _, i in taken])
        for neg, _, i in taken:
            if neg + 1 < 0:
                heapq.heappush(heap, (neg + 1, tie(), i))
    return batches


def max_batches(counts: Sequence[int], p: int) -> int:
    """Number of batches `fill_batches` makes from these chunk counts."""
    return len(fill_batches(counts, p))


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Resolve the DDP world size and rank, defaulting to torch.distributed (or a single process)."""
    initialized = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"PKSampler: rank {rank} is outside [0, {num_replicas})")
    return num_replicas, rank


class GroupRoundSampler(Resumable, DistributedSampler):
    """Yields dataset indices in rounds: in each round every image gives one of its items (captions), and the
    images of one group (a scene and its near-duplicate twin) come one after the other, so they share a batch.

    In-batch losses then meet the hard negative the group defines (the twin) instead of almost never (random
    batches hold a given image's twin with probability ~ batch / images). Groups and images are shuffled per
    round, an image's items per epoch, all seeded by (seed, epoch). Under DDP every rank builds the same
    order, cuts it into batches and takes every `num_replicas`-th one (a whole number per rank).

    Args:
        item_image: image of each dataset item (e.g. the split-local image index of each caption).
        image_group: group of each image (images alone in their group are singletons).
        batch_size: per-device batch size (the order is cut into batches of this size).
    """

    def __init__(
        self,
        item_image: Sequence[int],
        image_group: Sequence[int],
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        num_replicas, rank = _world(num_replicas, rank)
        items: dict[int, list[int]] = defaultdict(list)
        for i, image in enumerate(item_image):
            if not 0 <= int(image) < len(image_group):
                raise ValueError(
                    f"GroupRoundSampler: item {i} has image {image}, outside the {len(image_group)} given"
                )
            items[int(image)].append(i)
        groups: dict[int, list[int]] = defaultdict(list)
        for image in sorted(items):
            groups[int(image_group[image])].append(image)
        self.items = {k: np.asarray(v) for k, v in items.items()}
        self.groups = [np.asarray(v) for _, v in sorted(groups.items())]
        self.batch_size, self.num_replicas, self.rank, self.seed, self.epoch = (
            batch_size,
            num_replicas,
            rank,
            seed,
            0,
        )
        self.batches_per_rank = len(item_image) // batch_size // num_replicas
        if self.batches_per_rank < 1:
            raise ValueError(
                f"GroupRoundSampler: {len(item_image)} items fill no batch of {batch_size} per rank"
            )

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return self._resume(self._epoch_indices())

    def epoch_order(self) -> list[int]:
        """Every item once: rounds of one item per image, each group's images adjacent."""
        rng = np.random.default_rng([self.seed, self.epoch])
        per_image = {image: rng.permutation(idx) for image, idx in self.items.items()}
        order: list[int] = []
        for r in range(max(len(v) for v in per_image.values())):
            for g in rng.permutation(len(self.groups)):
                order += [
                    int(per_image[im][r]) for im in rng.permutation(self.groups[g]) if r < len(per_image[im])
                ]
        return order

    def _epoch_indices(self) -> Iterator[int]:
        order, b = self.epoch_order(), self.batch_size
        batches = [order[i : i + b] for i in range(0, self.batches_per_rank * self.num_replicas * b, b)]
        for batch in batches[self.rank :: self.num_replicas]:
            yield from batch
