"""The P x K identity sampler: batch composition, exact length, disjoint equal DDP shares, epoch seeding."""

from __future__ import annotations

from collections import Counter

import pytest

from fgbench.data.samplers import PKSampler, fill_batches, max_batches

# 7 identities with 1 to 9 samples each (identity 3 has fewer than K and is padded)
LABELS = [i for i, n in enumerate([8, 9, 4, 1, 6, 5, 8]) for _ in range(n)]


def batches_of(sampler: PKSampler, size: int) -> list[list[int]]:
    idx = list(sampler)
    assert len(idx) == len(sampler) and len(idx) % size == 0
    return [idx[i : i + size] for i in range(0, len(idx), size)]


@pytest.mark.parametrize(("batch_size", "k"), [(6, 2), (8, 4), (4, 1)])
def test_batches_hold_p_identities_of_k(batch_size: int, k: int) -> None:
    sampler = PKSampler(LABELS, batch_size, k)
    batches = batches_of(sampler, batch_size)
    assert batches
    for batch in batches:
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == batch_size // k and set(counts.values()) == {k}


def test_length_is_the_largest_packing() -> None:
    # chunks of K=2: 4, 4, 2, 1 (padded), 3, 2, 4 -> 20 chunks; P=3 -> at most 6 batches (and 6 reachable)
    assert max_batches([4, 4, 2, 1, 3, 2, 4], 3) == 6
    assert len(PKSampler(LABELS, 6, 2)) == 6 * 6
    # one dominant identity limits the packing: with P=2 it can pair with only 2 other chunks
    assert max_batches([10, 1, 1], 2) == 2
    for batch in fill_batches([10, 1, 1], 2):
        assert len(set(batch)) == 2


def test_ddp_shares_are_disjoint_and_equal() -> None:
    # K=2 chunks: 4, 4, 2, 1, 3, 2, 4 = 20 -> 10 batches of P=2 -> 3 per rank on 3 ranks (one dropped)
    shares = [PKSampler(LABELS, 4, 2, num_replicas=3, rank=r, seed=3) for r in range(3)]
    idx = [list(s) for s in shares]
    assert [len(s) for s in shares] == [len(i) for i in idx] == [12, 12, 12]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not set(idx[a]) & set(idx[b])
    flat = [i for share in idx for i in share if LABELS[i] != 3]  # identity 3 is padded by repetition
    assert len(flat) == len(set(flat))


def test_epoch_seeding_is_deterministic() -> None:
    a, b = PKSampler(LABELS, 4, 2, seed=1), PKSampler(LABELS, 4, 2, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_invalid_configurations() -> None:
    with pytest.raises(ValueError, match="multiple of k=4"):
        PKSampler(LABELS, 6, 4)
    with pytest.raises(ValueError, match="7 identities cannot fill"):
        PKSampler(LABELS, 16, 2)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        PKSampler(LABELS, 4, 2, num_replicas=2, rank=2)
