"""The P x K identity sampler: batch composition, exact length, disjoint equal DDP shares, epoch seeding."""

from __future__ import annotations

from collections import Counter

import pytest

from fgbench.data.samplers import GroupRoundSampler, PKSampler, fill_batches, max_batches

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


# -- GroupRoundSampler (synth-scenes twins) -----------------------------------------------------------------


def group_setup(n_images: int = 30, per_image: int = 5) -> tuple[list[int], list[int]]:
    """Items (captions) of images; images 2k and 2k+1 form a group for k < 5, the rest are singletons."""
    item_image = [im for im in range(n_images) for _ in range(per_image)]
    image_group = [min(im, im ^ 1) if im < 10 else im for im in range(n_images)]
    return item_image, image_group


def test_group_round_sampler_keeps_groups_together_and_images_apart() -> None:
    item_image, image_group = group_setup()
    s = GroupRoundSampler(item_image, image_group, batch_size=8, num_replicas=1, rank=0, seed=3)
    order = list(s)
    assert len(order) == len(s) == (150 // 8) * 8 and len(set(order)) == len(order)
    full = s.epoch_order()
    assert sorted(full) == list(range(150))  # every item once per epoch
    for r in range(5):  # rounds of one caption per image, each group's images adjacent
        round_images = [item_image[i] for i in full[30 * r : 30 * (r + 1)]]
        assert sorted(round_images) == list(range(30))
        for k in range(5):
            a, b = round_images.index(2 * k), round_images.index(2 * k + 1)
            assert abs(a - b) == 1
    s.set_epoch(1)
    assert list(s) != order
    again = GroupRoundSampler(item_image, image_group, batch_size=8, num_replicas=1, rank=0, seed=3)
    assert list(again) == order  # seeded by (seed, epoch) only


def test_group_round_sampler_ddp_shares_are_disjoint_and_equal() -> None:
    item_image, image_group = group_setup()
    shares = [
        list(GroupRoundSampler(item_image, image_group, 8, num_replicas=2, rank=r, seed=0)) for r in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1]) == 9 * 8 and not set(shares[0]) & set(shares[1])
    with pytest.raises(ValueError, match="outside"):
        GroupRoundSampler([0, 5], [0, 1], 1)
