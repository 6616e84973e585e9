"""fgbench.losses, each on its defining property (docs/methods.md §2, §4, §5, §7, §8, §9)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fgbench.losses import (
    IGNORE_INDEX,
    DynamicThreshold,
    batch_classification,
    equal_z_threshold,
    hardest_negative_triplet,
    id_loss,
    infonce,
    mask_tokens,
    mlm_loss,
    multi_similarity_ns,
    score_stats,
    sdm,
    sdm_from_logits,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- InfoNCE


def _explicit_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [-(logits[r, t].exp() / logits[r].exp().sum()).log() for r, t in enumerate(targets.tolist())]
    ).mean()


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_infonce_is_log_batch_when_all_features_are_equal(batch: int) -> None:
    f = _randn(1, 16).expand(batch, 16)
    assert infonce(f, f.clone(), logit_scale=30.0).item() == pytest.approx(math.log(batch), abs=1e-9)
    assert infonce(f, f.clone(), temperature=0.02).item() == pytest.approx(math.log(batch), abs=1e-9)


def test_infonce_is_symmetric_in_the_modalities() -> None:
    a, b = _randn(8, 16, seed=1), _randn(8, 16, seed=2)
    torch.testing.assert_close(infonce(a, b, temperature=0.07), infonce(b, a, temperature=0.07))


def test_infonce_equals_explicit_cross_entropy() -> None:
    a, b = _randn(6, 16, seed=3), _randn(6, 16, seed=4)
    scale = 1 / 0.07
    s = scale * (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T
    diag = torch.arange(6)
    expected = 0.5 * (_explicit_ce(s, diag) + _explicit_ce(s.T, diag))
    torch.testing.assert_close(infonce(a, b, logit_scale=scale), expected)
    torch.testing.assert_close(infonce(a, b, temperature=0.07), expected)
    torch.testing.assert_close(infonce(a, b, logit_scale=torch.tensor(scale), labels=diag), expected)


def test_infonce_labels_admit_extra_negatives() -> None:
    a, b = _randn(4, 16, seed=5), _randn(10, 16, seed=6)
    labels = torch.tensor([3, 4, 5, 6])  # e.g. this device's slice of a gathered b
    s = 20.0 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    expected = 0.5 * (_explicit_ce(s, labels) + _explicit_ce(s.T[labels], torch.arange(4)))
    torch.testing.assert_close(infonce(a, b, logit_scale=20.0, labels=labels), expected)


def test_infonce_rejects_ambiguous_scale_and_shapes() -> None:
    a = _randn(4, 8)
    with pytest.raises(ValueError, match="exactly one of logit_scale and temperature"):
        infonce(a, a)
    with pytest.raises(ValueError, match="exactly one of logit_scale and temperature"):
        infonce(a, a, 10.0, temperature=0.1)
    with pytest.raises(ValueError, match="pass labels"):
        infonce(a, _randn(5, 8), temperature=0.1)


# -------------------------------------------------------------------------------------------------------- SDM


def _identity_matrix(labels: torch.Tensor) -> torch.Tensor:
    return labels[:, None] == labels[None, :]


LABELS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])


def test_sdm_is_zero_at_the_target_distribution_and_shift_invariant() -> None:
    y = _identity_matrix(LABELS).double()
    q = y / y.sum(dim=1, keepdim=True)
    shift = _randn(len(LABELS), 1, seed=7) * 10
    assert abs(sdm_from_logits((q + 1e-8).log() + shift, y).item()) < 1e-5
    logits = _randn(len(LABELS), len(LABELS), seed=8) * 3
    loss = sdm_from_logits(logits, y)
    assert loss.item() > 1e-3
    torch.testing.assert_close(sdm_from_logits(logits + shift, y), loss)


def test_sdm_is_positive_away_from_the_target() -> None:
    y = _identity_matrix(LABELS)
    for seed in range(5):
        assert sdm_from_logits(_randn(len(LABELS), len(LABELS), seed=seed), y).item() > 0


def _irra_compute_sdm(image: torch.Tensor, text: torch.Tensor, pid: torch.Tensor, logit_scale: float):
    """anosorae/IRRA `objectives.compute_sdm`, as published (image_id=None)."""
    pid = pid.reshape(-1, 1)
    labels = (pid - pid.t() == 0).float()
    t2i = F.normalize(text, dim=1) @ F.normalize(image, dim=1).t()
    labels_distribute = labels / labels.sum(dim=1)
    out = 0
    for logits in (logit_scale * t2i.t(), logit_scale * t2i):
        pred = F.softmax(logits, dim=1)
        out = out + torch.mean(
            torch.sum(pred * (F.log_softmax(logits, dim=1) - torch.log(labels_distribute + 1e-8)), dim=1)
        )
    return out


def test_sdm_matches_the_irra_reference_code() -> None:
    text, image = _randn(8, 16, seed=9), _randn(8, 16, seed=10)
    expected = _irra_compute_sdm(image, text, LABELS, 1 / 0.02)
    torch.testing.assert_close(sdm(text, image, LABELS, tau=0.02), expected)


# ------------------------------------------------------------------------------------------------------ hinge


def _hinge_brute_force(S: torch.Tensor, margin: float, max_violation: bool, positive_mask=None) -> float:
    n = S.shape[0]
    total = 0.0
    for i in range(n):  # image i against captions j, then caption i against images j
        for costs in (
            [margin - S[i, i] + S[i, j] for j in range(n) if j != i and not _pos(positive_mask, i, j)],
            [margin - S[i, i] + S[j, i] for j in range(n) if j != i and not _pos(positive_mask, j, i)],
        ):
            hinges = [max(0.0, float(c)) for c in costs]
            total += (max(hinges) if max_violation else sum(hinges)) if hinges else 0.0
    return total


def _pos(mask, i: int, j: int) -> bool:
    return mask is not None and bool(mask[i, j])


@pytest.mark.parametrize("max_violation", [True, False])
def test_hinge_equals_brute_force(max_violation: bool) -> None:
    S = _randn(7, 7, seed=11) * 0.3
    image_of_caption = torch.tensor([0, 0, 1, 2, 2, 3, 4])
    same_image = _identity_matrix(image_of_caption)
    for mask in (None, same_image):
        got = hardest_negative_triplet(S, 0.2, max_violation, positive_mask=mask)
        assert got.item() == pytest.approx(_hinge_brute_force(S, 0.2, max_violation, mask))


def test_hinge_max_mode_is_at_most_sum_mode() -> None:
    for seed in range(5):
        S = _randn(6, 6, seed=seed) * 0.3
        assert hardest_negative_triplet(S, max_violation=True) <= hardest_negative_triplet(
            S, max_violation=False
        )


def test_hinge_diagonal_is_never_a_negative() -> None:
    S = torch.eye(5, dtype=torch.float64)  # every positive beats every negative by 1 > α
    assert hardest_negative_triplet(S, margin=0.2).item() == 0.0
    assert hardest_negative_triplet(S, margin=0.2, max_violation=False).item() == 0.0


def test_hinge_is_zero_once_every_margin_is_met_in_both_directions() -> None:
    diag = torch.tensor([0.5, 0.9, 0.7, 0.8], dtype=torch.float64)
    S = torch.full((4, 4), 0.29, dtype=torch.float64)
    S.diagonal().copy_(diag)  # min positive 0.5 beats every negative by 0.21 ≥ α
    assert hardest_negative_triplet(S, margin=0.2).item() == 0.0
    S[1, 0] = 0.6  # still ≤ S_11 - α (image 1's row), but breaks caption 0's column: S_00 - α = 0.3
    assert hardest_negative_triplet(S, margin=0.2).item() == pytest.approx(0.2 - 0.5 + 0.6)


# --------------------------------------------------------------------------------------------------------- ID


def test_id_loss_shares_one_classifier_across_modalities() -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Linear(16, 5)
    image, text, y = torch.randn(6, 16), torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    loss = id_loss(classifier, image, text, y)
    expected = 0.5 * (F.cross_entropy(classifier(image), y) + F.cross_entropy(classifier(text), y))
    torch.testing.assert_close(loss, expected)
    (g,) = torch.autograd.grad(loss, classifier.weight)
    (g_img,) = torch.autograd.grad(F.cross_entropy(classifier(image), y), classifier.weight)
    (g_txt,) = torch.autograd.grad(F.cross_entropy(classifier(text), y), classifier.weight)
    assert g_img.abs().sum() > 0 and g_txt.abs().sum() > 0 and not torch.allclose(g_img, g_txt)
    torch.testing.assert_close(g, 0.5 * (g_img + g_txt))


# ------------------------------------------------------------------------------------------------ IRR masking

PAD, SOT, EOT, MASK, UNK, VOCAB = 0, 1, 2, 3, 4, 1000
SPECIAL = [PAD, SOT, EOT, UNK]


def _captions(
    n: int, length: int, min_words: int, max_words: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SOT words EOT PAD...; about 1 word in 20 is UNK, a listed special id inside the caption."""
    g = _gen(seed)
    words = torch.randint(min_words, max_words + 1, (n,), generator=g)
    pos = torch.arange(length)
    ids = torch.randint(UNK + 1, VOCAB, (n, length), generator=g)
    ids[torch.rand(n, length, generator=g) < 0.05] = UNK
    ids[:, 0] = SOT
    ids[pos[None] == words[:, None] + 1] = EOT
    attention = pos[None] <= words[:, None] + 1
    return ids.masked_fill(~attention, PAD), attention


def test_masking_rates_and_eligibility_on_many_captions() -> None:
    ids, attention = _captions(10_000, 77, 10, 60, seed=12)
    masked, labels = mask_tokens(ids, attention, SPECIAL, MASK, VOCAB, generator=_gen(13))
    eligible = attention & ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != IGNORE_INDEX
    assert not (chosen & ~eligible).any()  # specials, padding never chosen
    assert chosen.any(dim=1).all()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert chosen.sum() / eligible.sum() == pytest.approx(0.15, abs=0.02)
    n = chosen.sum().item()
    to_mask = (masked == MASK) & chosen
    kept = (masked == ids) & chosen
    replaced = chosen & ~to_mask & ~kept
    assert to_mask.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert replaced.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert kept.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert not torch.isin(masked[replaced], torch.tensor([*SPECIAL, MASK])).any()


def test_masking_chooses_one_token_in_every_caption_with_a_real_token() -> None:
    ids = torch.tensor([[SOT, 17, EOT, PAD], [SOT, UNK, EOT, PAD], [SOT, EOT, PAD, PAD]])
    attention = ids != PAD
    for seed in range(20):
        masked, labels = mask_tokens(ids, attention, SPECIAL, MASK, VOCAB, generator=_gen(seed))
        assert labels.tolist() == [[IGNORE_INDEX, 17, IGNORE_INDEX, IGNORE_INDEX]] + [[IGNORE_INDEX] * 4] * 2
        assert torch.equal(masked[1:], ids[1:])


def test_masking_is_reproducible_with_a_generator() -> None:
    ids, attention = _captions(50, 16, 1, 14, seed=14)
    first = mask_tokens(ids, attention, SPECIAL, MASK, VOCAB, generator=_gen(15))
    second = mask_tokens(ids, attention, SPECIAL, MASK, VOCAB, generator=_gen(15))
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


def test_mlm_loss_ignores_unmasked_positions() -> None:
    ids, attention = _captions(4, 12, 3, 10, seed=16)
    _, labels = mask_tokens(ids, attention, SPECIAL, MASK, VOCAB, generator=_gen(17))
    logits = _randn(4, 12, VOCAB, seed=18)
    chosen = labels != IGNORE_INDEX
    loss = mlm_loss(logits, labels)
    torch.testing.assert_close(loss, _explicit_ce(logits[chosen], labels[chosen]))
    changed = logits.clone()
    changed[~chosen] = _randn(int((~chosen).sum()), VOCAB, seed=19) * 5
    assert mlm_loss(changed, labels).item() == loss.item()


def test_mlm_loss_with_nothing_chosen_is_zero_not_nan() -> None:
    logits = _randn(2, 5, 10).requires_grad_()
    loss = mlm_loss(logits, torch.full((2, 5), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# --------------------------------------------------------------------------------------- batch classification


def test_batch_classification_equals_explicit_cross_entropy() -> None:
    q, g = _randn(5, 8, seed=20), _randn(5, 8, seed=21)
    scale = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    loss = batch_classification(q, g, scale)
    torch.testing.assert_close(loss, _explicit_ce(scale.detach() * q @ g.T, torch.arange(5)))
    loss.backward()
    assert scale.grad is not None and scale.grad.item() != 0.0


# ------------------------------------------------------------------------------------------------------ NSFSE


def _batch_scores(n: int, seed: int, gap: float = 0.4) -> torch.Tensor:
    """Cosine-like scores whose positives (diagonal) sit `gap` above the negatives on average."""
    return (_randn(n, n, seed=seed) * 0.1 + torch.eye(n, dtype=torch.float64) * gap).clamp(-1, 1)


finite = st.floats(-1.0, 1.0, allow_nan=False)
spread = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(mu_p=finite, mu_n=finite, sigma_p=spread, sigma_n=spread)
def test_threshold_lies_between_the_means(mu_p: float, mu_n: float, sigma_p: float, sigma_n: float) -> None:
    theta = equal_z_threshold(torch.tensor([mu_p, sigma_p, mu_n, sigma_n], dtype=torch.float64)).item()
    lo, hi = min(mu_p, mu_n), max(mu_p, mu_n)
    assert lo - 1e-12 <= theta <= hi + 1e-12
    assert (mu_p - theta) * sigma_n == pytest.approx((theta - mu_n) * sigma_p, abs=1e-12)  # equal z-scores
    if sigma_p == sigma_n:
        assert theta == pytest.approx((mu_p + mu_n) / 2)


def test_threshold_from_a_batch_lies_between_its_means() -> None:
    S = _batch_scores(16, seed=22)
    for neg_stats in ("all", "top5"):
        mu_p, _, mu_n, _ = score_stats(S, neg_stats=neg_stats).tolist()
        assert mu_n < mu_p
        theta = DynamicThreshold(neg_stats=neg_stats)(S).item()
        assert mu_n <= theta <= mu_p


def test_score_stats_match_explicit_selection() -> None:
    S = _batch_scores(8, seed=23)
    off = S[~torch.eye(8, dtype=torch.bool)].reshape(8, 7)
    top5 = off.sort(dim=1, descending=True).values[:, :5]
    for neg_stats, negatives in (("all", off), ("top5", top5)):
        expected = [
            S.diagonal().mean(),
            S.diagonal().std(correction=0),
            negatives.mean(),
            negatives.std(correction=0),
        ]
        torch.testing.assert_close(score_stats(S, neg_stats=neg_stats), torch.stack(expected))


def test_threshold_ema_eval_and_fixed_modes() -> None:
    s1, s2 = _batch_scores(8, seed=24).float(), _batch_scores(8, seed=25, gap=0.6).float()  # buffer dtype
    st1, st2 = score_stats(s1), score_stats(s2)
    ema = DynamicThreshold()
    ema(s1)
    theta = ema(s2)
    torch.testing.assert_close(theta, equal_z_threshold(0.9 * st1 + 0.1 * st2))
    ema.eval()
    assert torch.equal(ema(s1), theta)  # eval mode leaves the state alone
    no_ema = DynamicThreshold(ema=False)
    no_ema(s1)
    torch.testing.assert_close(no_ema(s2), equal_z_threshold(st2))
    assert DynamicThreshold(mode="fixed")(s2).item() == 0.5


def test_threshold_carries_no_gradient() -> None:
    S = _batch_scores(8, seed=26).requires_grad_()
    theta = DynamicThreshold()(S)
    assert not theta.requires_grad
    eye = torch.eye(8, dtype=torch.bool)
    (grad_dynamic,) = torch.autograd.grad(multi_similarity_ns(S, eye, theta), S)
    (grad_constant,) = torch.autograd.grad(multi_similarity_ns(S, eye, theta.item()), S)
    torch.testing.assert_close(grad_dynamic, grad_constant)


def test_ns_loss_equals_its_formula() -> None:
    S = _batch_scores(6, seed=27)
    pos = torch.eye(6, dtype=torch.bool)
    pos[0, 3] = True  # item 3 has the same target as item 0
    theta, a, b = 0.3, 2.0, 50.0
    rows = [
        math.log1p(sum(math.exp(-a * (S[i, k] - theta)) for k in range(6) if pos[i, k])) / a
        + math.log1p(sum(math.exp(b * (S[i, j] - theta)) for j in range(6) if not pos[i, j])) / b
        for i in range(6)
    ]
    assert multi_similarity_ns(S, pos, theta, a, b).item() == pytest.approx(sum(rows) / 6)


def test_ns_gradient_is_larger_for_negatives_above_the_threshold() -> None:
    S = _batch_scores(6, seed=28).requires_grad_()
    theta = 0.2
    with torch.no_grad():
        S[0, 1], S[0, 2] = theta + 0.05, theta - 0.05
    (grad,) = torch.autograd.grad(multi_similarity_ns(S, torch.eye(6, dtype=torch.bool), theta), S)
    assert grad[0, 1] > grad[0, 2] > 0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), i=st.integers(0, 5), j=st.integers(0, 5), delta=st.floats(1e-3, 1.0))
def test_raising_a_negative_never_lowers_the_ns_loss(seed: int, i: int, j: int, delta: float) -> None:
    if i == j:
        j = (j + 1) % 6
    S = _batch_scores(6, seed=seed)
    pos = torch.eye(6, dtype=torch.bool)
    raised = S.clone()
    raised[i, j] += delta
    assert multi_similarity_ns(raised, pos, 0.3) >= multi_similarity_ns(S, pos, 0.3)
