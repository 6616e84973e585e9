"""Bad input to the evaluator: each gives an error that says what is wrong."""

from __future__ import annotations

import pytest
import torch

from fgbench.evaluation import EvalSpec, FunctionSource, evaluate


def spec(q: int = 4, g: int = 5, **kw) -> EvalSpec:
    return EvalSpec("person_t2i", kw.pop("ql", torch.arange(q) % g), kw.pop("gl", torch.arange(g)), **kw)


def test_wrong_score_shape() -> None:
    with pytest.raises(ValueError, match=r"2-D \[queries, gallery\] matrix"):
        evaluate(torch.zeros(4), spec())


def test_labels_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="query labels have 3 entries but the scores have 4 score rows"):
        evaluate(torch.randn(4, 5), spec(ql=torch.arange(3)))
    with pytest.raises(ValueError, match="gallery labels have 6 entries but the scores have 5 score columns"):
        evaluate(torch.randn(4, 5), spec(gl=torch.arange(6)))


def test_float_labels_rejected() -> None:
    with pytest.raises(ValueError, match="must be integers"):
        evaluate(torch.randn(4, 5), spec(gl=torch.arange(5).float()))


def test_nan_scores() -> None:
    S = torch.randn(4, 5)
    S[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN.*query 2, column 3"):
        evaluate(S, spec())


def test_nan_from_a_score_function() -> None:
    fn = FunctionSource(lambda r, c: torch.full((r.numel(), c.numel()), float("nan")), 4, 5)
    with pytest.raises(ValueError, match="NaN"):
        evaluate(fn, spec())


def test_query_without_positive() -> None:
    with pytest.raises(
        ValueError, match=r"1 queries have no relevant gallery item.*query indices \[2\], labels \[9\]"
    ):
        evaluate(torch.randn(4, 5), spec(ql=torch.tensor([0, 1, 9, 3])))


def test_excluding_the_only_positive_is_a_missing_positive() -> None:
    s = EvalSpec("f200k", torch.tensor([0, 1]), torch.arange(5), exclude=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="no relevant gallery item"):
        evaluate(torch.randn(2, 5), s)


def test_exclude_out_of_range() -> None:
    s = EvalSpec("f200k", torch.tensor([0, 1]), torch.arange(5), exclude=torch.tensor([7, -1]))
    with pytest.raises(ValueError, match=r"exclude: value 7 .* not a gallery index in \[-1, 5\)"):
        evaluate(torch.randn(2, 5), s)


def test_unknown_protocol_lists_known() -> None:
    with pytest.raises(KeyError, match="unknown protocol 'nope'; known: .*person_t2i"):
        evaluate(torch.randn(2, 2), EvalSpec("nope", torch.arange(2), torch.arange(2)))


def test_protocol_rules_enforced() -> None:
    S = torch.randn(2, 5)
    with pytest.raises(ValueError, match="fiq_b excludes"):
        evaluate(S, EvalSpec("fiq_b", torch.tensor([0, 1]), torch.arange(5)))
    with pytest.raises(ValueError, match="fiq_a keeps the candidate"):
        evaluate(S, EvalSpec("fiq_a", torch.tensor([0, 1]), torch.arange(5), exclude=torch.tensor([2, 3])))
    with pytest.raises(ValueError, match="one query row per class"):
        evaluate(S, EvalSpec("class_reed", torch.tensor([0, 0]), torch.arange(5) % 2))
    with pytest.raises(ValueError, match="divisible by 5"):
        evaluate(torch.randn(7, 35), EvalSpec("coco_1k_5fold", torch.arange(7), torch.arange(35) // 5))


def test_cirr_target_outside_subset() -> None:
    s = EvalSpec(
        "cirr",
        torch.tensor([4]),
        torch.arange(8),
        exclude=torch.tensor([0]),
        subsets=torch.tensor([[0, 1, 2, 3, 5, 6]]),
    )
    with pytest.raises(ValueError, match="target is not among the subset members"):
        evaluate(torch.randn(1, 8), s)
