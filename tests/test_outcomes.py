"""Per-query outcomes: every protocol's metrics decompose exactly into per-unit values, ids are stable and
unique for every datamodule, runs store them beside result.json atomically (evaluation/outcomes.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fgbench.data.module import RetrievalDataModule
from fgbench.data.query_ids import number_repeats
from fgbench.data.validation import DatasetFormatError
from fgbench.evaluation import EvalResult, EvalSpec, evaluate, get_protocol
from fgbench.evaluation.outcomes import (
    DirectionOutcomes,
    MetricSample,
    QueryOutcomes,
    align,
    load_outcomes,
    metric_values,
    outcomes_file,
    same_queries,
    save_outcomes,
)
from fgbench.evaluation.per_query import pooled_ids

from eval_reference import fashioniq_case

NOT_DECOMPOSED = ("medr",)  # a median has no per-unit decomposition


def tied(rng: np.random.Generator, q: int, g: int, levels: int = 6) -> torch.Tensor:
    return torch.from_numpy(rng.integers(0, levels, size=(q, g)).astype(np.float32))


def check_decomposes(res: EvalResult, tmp: Path | None = None) -> QueryOutcomes:
    """Every metric: the mean of its per-unit values equals it; the file round-trips the same values."""
    o = res.outcomes
    assert o is not None
    loaded = None
    if tmp is not None:
        save_outcomes(tmp / "o.npz", o)
        loaded = load_outcomes(tmp / "o.npz")
    for key, value in res.metrics.items():
        if key.endswith(NOT_DECOMPOSED):
            with pytest.raises(KeyError, match="no per-query metric"):
                metric_values(o, key)
            continue
        s = metric_values(o, key)
        assert s.values.mean() == pytest.approx(value, rel=1e-9, abs=1e-9), key
        assert len(np.unique(s.units)) == len(s.units) and (np.sort(s.units) == s.units).all()
        if loaded is not None:
            t = metric_values(loaded, key)
            assert (t.units == s.units).all() and np.array_equal(t.values, s.values), key
    with pytest.raises(KeyError, match="no per-query metric"):
        metric_values(o, "nonsense")
    # the protocol's registered headline metrics are what it produces, and each decomposes per query
    headline = get_protocol(res.details["protocol"]).headline
    assert set(headline) <= set(res.metrics), (headline, sorted(res.metrics))
    return o


def test_person_t2i_with_exclusions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gl = rng.integers(0, 5, size=23)
    ql = rng.choice(gl, size=31)
    ex = np.where(rng.random(31) < 0.5, rng.integers(0, 23, size=31), -1)
    ex[gl[ex] == ql] = -1  # never exclude a query's only positive
    ids = [f"img{i // 2}.jpg#{i % 2}" for i in range(31)]
    spec = EvalSpec(
        "person_t2i",
        torch.from_numpy(ql),
        torch.from_numpy(gl),
        exclude=torch.from_numpy(ex),
        query_ids=ids,
        info={"split": "test", "dataset": "toy"},
    )
    for block in (1, 7, 100):
        res = evaluate(tied(rng, 31, 23), spec, block_rows=block)
        o = check_decomposes(res, tmp_path)
    d = o.directions["t2i"]
    assert d.ids.tolist() == ids and o.split == "test" and o.info["ids"] == "dataset"
    n_pos = np.array([(gl == q).sum() - (e >= 0 and gl[e] == q) for q, e in zip(ql, ex, strict=True)])
    assert d.stats["n_pos"].tolist() == n_pos.tolist()
    assert d.stats["n_cand"].tolist() == (23 - (ex >= 0)).tolist()
    assert set(d.stats) == {"ap", "inp", "n_pos", "n_cand"}


def test_person_t2i_rerank_outcomes_are_the_final_ranks() -> None:
    rng = np.random.default_rng(1)
    gl = rng.integers(0, 4, size=19)
    ql = rng.choice(gl, size=17)
    S, R = tied(rng, 17, 19), tied(rng, 17, 19, levels=3)
    from fgbench.evaluation import MatrixSource

    src = MatrixSource(S, pair_fn=lambda r, c: R[r, c])
    res = evaluate(src, EvalSpec("person_t2i", torch.from_numpy(ql), torch.from_numpy(gl)), rerank_k=4)
    o = check_decomposes(res)
    assert o.info["ids"] == "position" and o.directions["t2i"].ids[:3].tolist() == ["0", "1", "2"]


def test_class_reed_units_are_classes_and_images() -> None:
    rng = np.random.default_rng(2)
    gl = rng.integers(0, 6, size=130)
    spec = EvalSpec(
        "class_reed",
        torch.arange(6),
        torch.from_numpy(gl),
        query_ids=[f"class{c}" for c in range(6)],
        gallery_names=[f"c/{i}" for i in range(130)],
    )
    o = check_decomposes(evaluate(tied(rng, 6, 130, levels=4), spec))
    assert metric_values(o, "AP50").units.tolist() == [f"class{c}" for c in range(6)]
    assert len(metric_values(o, "top1").units) == 130
    assert (o.directions["i2t"].stats["n_cand"] == 6).all() and (
        o.directions["t2i"].stats["n_cand"] == 130
    ).all()


def itm_spec(protocol: str, rng: np.random.Generator, n_img: int) -> EvalSpec:
    """Uneven captions per image (the 'all' policy): 3 to 7 each."""
    per = rng.integers(3, 8, size=n_img)
    cap = np.repeat(np.arange(n_img), per)
    rng.shuffle(cap)
    k = {i: 0 for i in range(n_img)}
    cap_ids = []
    for c in cap:
        cap_ids.append(f"im{c}.jpg#{k[int(c)]}")
        k[int(c)] += 1
    return EvalSpec(
        protocol,
        torch.arange(n_img),
        torch.from_numpy(cap),
        query_ids=[f"im{i}.jpg" for i in range(n_img)],
        gallery_names=cap_ids,
    )


@pytest.mark.parametrize("protocol", ["f30k_1k", "coco_5k", "coco_1k_5fold"])
@pytest.mark.parametrize("seed", range(3))
def test_image_text_rsum_decomposes_by_image(protocol: str, seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    spec = itm_spec(protocol, rng, 20)
    res = evaluate(tied(rng, 20, spec.n_gallery), spec, block_rows=3)
    o = check_decomposes(res, tmp_path)
    i2t, t2i = o.directions["i2t"], o.directions["t2i"]
    assert (i2t.unit == i2t.ids).all()
    assert all(c.split("#")[0] == u for c, u in zip(t2i.ids, t2i.unit, strict=True))  # a caption's unit
    units = metric_values(o, "rsum").units
    assert units.tolist() == sorted(f"im{i}.jpg" for i in range(20))
    if protocol == "coco_1k_5fold":
        assert sorted(set(i2t.stats["fold"].tolist())) == list(range(5)) and o.info["folds"] == 5
        # each fold's captions rank that fold's 4 images; each image's among its fold's captions
        assert (t2i.stats["n_cand"] == 4).all()
        folds = res.details["folds"]
        for f in range(5):
            mine = i2t.stats["fold"] == f
            assert 100.0 * (i2t.first[mine] < 1).mean() == pytest.approx(folds[f]["i2t_R1"])
    else:
        assert (t2i.stats["n_cand"] == 20).all() and (i2t.stats["n_cand"] == spec.n_gallery).all()
        assert (t2i.stats["n_pos"] == 1).all()


@pytest.mark.parametrize("protocol", ["fiq_a", "fiq_b"])
def test_fashioniq_category_average_decomposes(protocol: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cats = {"dress": (12, 60), "shirt": (9, 55), "toptee": (7, 70)}
    nq, ng = sum(q for q, _ in cats.values()), sum(g for _, g in cats.values())
    spec, _ = fashioniq_case(rng, cats, protocol)
    o = check_decomposes(evaluate(tied(rng, nq, ng), spec, block_rows=4), tmp_path)
    assert list(o.directions) == list(cats)
    for name, (n, m) in cats.items():
        d = o.directions[name]
        assert len(d.ids) == n and all(i.startswith(f"{name}/") for i in d.ids)
        assert (d.stats["n_cand"] == m - (protocol == "fiq_b")).all()
    assert len(metric_values(o, "avg").units) == nq


def cirr_spec(rng: np.random.Generator, nq: int, ng: int, labelled: bool = True) -> EvalSpec:
    sub = np.stack([rng.choice(ng, size=6, replace=False) for _ in range(nq)])
    sub[::4, 5] = -1  # a short image set
    ex = sub[:, 0].copy()
    ql = sub[np.arange(nq), rng.integers(1, 5, size=nq)]
    return EvalSpec(
        "cirr",
        torch.from_numpy(ql) if labelled else None,
        torch.arange(ng),
        exclude=torch.from_numpy(ex),
        subsets=torch.from_numpy(sub),
        query_ids=[str(1000 + i) for i in range(nq)],
        gallery_names=[f"img-{g}" for g in range(ng)],
    )


def test_cirr_subset_recall_and_avg(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    spec = cirr_spec(rng, 25, 70)
    o = check_decomposes(evaluate(tied(rng, 25, 70), spec), tmp_path)
    d = o.directions["cirr"]
    assert d.ids.tolist() == spec.query_ids
    assert d.stats["n_sub"].tolist() == [4 if i % 4 == 0 else 5 for i in range(25)]
    assert (d.stats["n_cand"] == 69).all() and (d.stats["n_pos"] == 1).all()
    no_targets = evaluate(tied(rng, 25, 70), cirr_spec(rng, 25, 70, labelled=False))
    assert no_targets.outcomes is None and no_targets.metrics == {}


def test_f200k(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    gl = rng.integers(0, 40, size=150)
    ex = rng.integers(0, 150, size=30)
    tgt = np.array([rng.choice([g for g in range(150) if g != e]) for e in ex])
    spec = EvalSpec("f200k", torch.from_numpy(gl[tgt]), torch.from_numpy(gl), exclude=torch.from_numpy(ex))
    o = check_decomposes(evaluate(tied(rng, 30, 150), spec), tmp_path)
    d = o.directions["f200k"]
    want = [(gl == gl[t]).sum() - (gl[e] == gl[t]) for t, e in zip(tgt, ex, strict=True)]
    assert d.stats["n_pos"].tolist() == want and (d.stats["n_cand"] == 149).all()


def test_repeated_or_missized_ids_are_refused() -> None:
    spec = EvalSpec("person_t2i", torch.tensor([0, 1]), torch.tensor([0, 1]), query_ids=["a", "a"])
    with pytest.raises(ValueError, match="ids repeat"):
        evaluate(torch.eye(2), spec)
    spec.query_ids = ["a"]
    with pytest.raises(ValueError, match="1 ids for 2"):
        evaluate(torch.eye(2), spec)


# -- pairing --------------------------------------------------------------------------------------------


def test_align_names_what_differs() -> None:
    a = MetricSample("R1", np.array(["a", "b", "c"]), np.zeros(3))
    b = MetricSample("R1", np.array(["a", "b", "d"]), np.ones(3))
    assert align([a, a]).tolist() == ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"1 only in run1 \(e.g. \['c'\]\), 1 only in run2 \(e.g. \['d'\]\)"):
        align({"run1": a, "run2": b})
    with pytest.raises(ValueError, match="holds 'R5'"):
        align([a, MetricSample("R5", a.units, a.values)])


def test_same_queries_names_the_difference() -> None:
    def outcomes(ids: list[str], split: str = "test") -> QueryOutcomes:
        d = DirectionOutcomes(np.array(ids), np.zeros(len(ids), dtype=np.int64))
        return QueryOutcomes("person_t2i", split, {"t2i": d}, {"dataset": "toy"})

    same_queries({"a": outcomes(["x", "y"]), "b": outcomes(["y", "x"])})
    with pytest.raises(ValueError, match="differ in split"):
        same_queries({"a": outcomes(["x"]), "b": outcomes(["x"], "val")})
    with pytest.raises(ValueError, match=r"only in a: \['y'\]"):
        same_queries({"a": outcomes(["x", "y"]), "b": outcomes(["x", "z"])})


# -- the file -------------------------------------------------------------------------------------------


def test_outcomes_file_names() -> None:
    assert outcomes_file("test") == "outcomes.test.npz"
    assert outcomes_file("test", "rerank10") == "outcomes.test.rerank10.npz"


def test_bad_file_gives_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "outcomes.test.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match=f"{bad}: not a per-query outcomes file"):
        load_outcomes(bad)
    with pytest.raises(FileNotFoundError, match="re-test the run"):
        load_outcomes(tmp_path / "absent.npz")
    np.savez(bad, x=np.zeros(2))
    with pytest.raises(ValueError, match="not a per-query outcomes file"):
        load_outcomes(bad)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    res = evaluate(tied(rng, 8, 8), EvalSpec("person_t2i", torch.arange(8), torch.arange(8)))
    assert res.outcomes is not None
    path = save_outcomes(tmp_path / "outcomes.test.npz", res.outcomes)
    before = path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["outcomes.test.npz"]

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        save_outcomes(path, res.outcomes)
    assert path.read_bytes() == before  # the old file stands, no temp file is left
    assert [p.name for p in tmp_path.iterdir()] == ["outcomes.test.npz"]


# -- stable query ids of every datamodule ---------------------------------------------------------------


def _person(tmp: Path, quirky: bool = False) -> Callable[[], RetrievalDataModule]:
    from datamodules.person import RSTPReidDataModule
    from tests.fixtures.person import inject_quirk, write_rstpreid

    fx = write_rstpreid(tmp)
    if quirky:
        inject_quirk(fx, "duplicate_path")
    return lambda: RSTPReidDataModule(root=str(tmp))


def _cuhk(tmp: Path) -> Callable[[], RetrievalDataModule]:
    from datamodules.person import CUHKPedesDataModule
    from tests.fixtures.person import write_cuhk

    write_cuhk(tmp)
    return lambda: CUHKPedesDataModule(root=str(tmp))


def _reed(tmp: Path) -> Callable[[], RetrievalDataModule]:
    from datamodules.reed import CUBDataModule
    from tests.fixtures.reed import write_cub

    write_cub(tmp)
    return lambda: CUBDataModule(root=str(tmp))


def _f30k(tmp: Path) -> Callable[[], RetrievalDataModule]:
    from datamodules.itm import Flickr30KDataModule
    from tests.fixtures import itm

    itm.write_f30k_images(tmp)
    return lambda: Flickr30KDataModule(root=str(tmp))


def _coco_5fold(tmp: Path) -> Callable[[], RetrievalDataModule]:
    from datamodules.itm import COCODataModule
    from tests.fixtures import itm

    itm.write_coco_images(tmp)
    return lambda: COCODataModule(root=str(tmp), coco_protocol="coco_1k_5fold", caption_policy="all")


def _coco_butd(tmp: Path) -> Callable[[], RetrievalDataModule]:
    from datamodules.itm import COCODataModule
    from tests.fixtures import itm

    itm.write_coco_butd(tmp)
    return lambda: COCODataModule(root=str(tmp), feature_source="butd")


def _f30k_precomp(tmp: Path) -> Callable[[], RetrievalDataModule]:
    from datamodules.itm import Flickr30KDataModule
    from tests.fixtures import itm

    itm.write_precomp(tmp, "f30k", {"train": 3, "dev": 2, "test": 2})
    return lambda: Flickr30KDataModule(root=str(tmp), feature_source="precomp")


def _cirr(tmp: Path, quirky: bool = False) -> Callable[[], RetrievalDataModule]:
    from datamodules.cirr import CIRRDataModule
    from tests.fixtures.composed import CIRR_QUIRKS, write_cirr

    write_cirr(tmp, quirks=CIRR_QUIRKS if quirky else ())
    return lambda: CIRRDataModule(root=str(tmp))


def _fiq(tmp: Path, quirky: bool = False, protocol: str = "fiq_a") -> Callable[[], RetrievalDataModule]:
    from datamodules.fashioniq import FashionIQDataModule
    from tests.fixtures.composed import FIQ_QUIRKS, write_fashioniq

    write_fashioniq(tmp, quirks=FIQ_QUIRKS if quirky else ())
    return lambda: FashionIQDataModule(root=str(tmp), protocol=protocol)


def _f200k(tmp: Path, quirky: bool = False) -> Callable[[], RetrievalDataModule]:
    from datamodules.fashion200k import Fashion200KDataModule
    from tests.fixtures.composed import F200K_QUIRKS, write_fashion200k

    write_fashion200k(tmp, quirks=F200K_QUIRKS if quirky else ())
    return lambda: Fashion200KDataModule(root=str(tmp))


DATAMODULES: dict[str, Callable[[Path], Callable[[], RetrievalDataModule]]] = {
    "rstpreid": _person,
    "rstpreid-duplicate-path": lambda t: _person(t, quirky=True),
    "cuhk-pedes": _cuhk,
    "cub": _reed,
    "flickr30k": _f30k,
    "coco-5fold": _coco_5fold,
    "coco-butd": _coco_butd,
    "flickr30k-precomp": _f30k_precomp,
    "cirr": _cirr,
    "cirr-quirks": lambda t: _cirr(t, quirky=True),
    "fashioniq": _fiq,
    "fashioniq-b-quirks": lambda t: _fiq(t, quirky=True, protocol="fiq_b"),
    "fashion200k": _f200k,
    "fashion200k-quirks": lambda t: _f200k(t, quirky=True),
}
REPEATS = {"rstpreid-duplicate-path", "fashioniq-b-quirks"}  # fixtures listing a query twice
ID_FORMAT = {  # a regular expression every query id of the dataset matches
    "person_t2i": r"\S+\.jpg(~\d+)?#\d+",
    "class_reed": r"\d{3}\.Bird_\d+/Bird_\d+_\d{4}_\d+#\d+",
    "f30k_1k": r"(img\d+\.jpg|test:\d+|dev:\d+|\d+)",  # COCO val: cocoids
    "coco_5k": r"\d+",
    "coco_1k_5fold": r"\d+",
    "cirr": r"\d+(~\d+)?",
    "fiq_a": r"(dress|shirt|toptee)/\w+>\w+#0(~\d+)?",
    "fiq_b": r"(dress|shirt|toptee)/\w+>(\w+|None)#[01](~\d+)?",
    "f200k": r"\S+\.(jpg|jpeg)>\S+\.(jpg|jpeg)(~\d+)?",
}


def _pooled(spec: EvalSpec) -> EvalSpec:
    """class_reed as the base method pools it: one row per class, named by the class."""
    assert spec.query_labels is not None
    labels = torch.unique(spec.query_labels, sorted=True)
    return EvalSpec(
        spec.protocol,
        labels,
        spec.gallery_labels,
        query_ids=pooled_ids(spec, labels),
        gallery_names=spec.gallery_names,
        info=dict(spec.info),
    )


@pytest.mark.parametrize("case", list(DATAMODULES))
def test_query_ids_are_stable_unique_and_keyed_in_the_outcomes(case: str, tmp_path: Path) -> None:
    make = DATAMODULES[case](tmp_path)
    first, again = make(), make()
    labelled = [s for s in first.loaded.eval_sets if first.evaluation_set(s).spec.query_labels is not None]
    numbered = [i for s in labelled for i in first.evaluation_set(s).spec.query_ids or [] if "~" in i]
    # the quirks a loader keeps twice (a repeated path, pair id, entry) are numbered, never dropped
    assert bool(numbered) == (case in REPEATS), numbered
    for split in labelled:  # (CIRR test1 keeps its pair ids as written: the submission's keys)
        spec, spec2 = first.evaluation_set(split).spec, again.evaluation_set(split).spec
        ids = spec.query_ids
        assert ids is not None and len(ids) == spec.n_query and len(set(ids)) == len(ids), split
        assert ids == spec2.query_ids and spec.gallery_names == spec2.gallery_names  # the same every run
        pattern = ID_FORMAT[spec.protocol]
        assert all(re.fullmatch(pattern, i) for i in ids), (
            split,
            [i for i in ids if not re.fullmatch(pattern, i)],
        )
        if spec.protocol in ("f30k_1k", "coco_5k", "coco_1k_5fold", "class_reed"):  # columns are queries too
            names = spec.gallery_names
            assert names is not None and len(names) == spec.n_gallery and len(set(names)) == len(names)
        if spec.protocol == "class_reed":
            spec = _pooled(spec)
            assert all(re.fullmatch(r"\d{3}\.Bird_\d+", i) for i in spec.query_ids or [])
        if spec.protocol == "coco_1k_5fold" and spec.n_query % 5:
            continue
        rng = np.random.default_rng(0)
        res = evaluate(tied(rng, spec.n_query, spec.n_gallery), spec)
        o = check_decomposes(res)
        assert o.info["ids"] == "dataset" and o.split == split and o.info["dataset"] == first.name
        keyed = np.concatenate([d.ids for d in o.directions.values()])
        if spec.protocol in ("f30k_1k", "coco_5k", "coco_1k_5fold"):
            assert sorted(keyed.tolist()) == sorted([*ids, *(spec.gallery_names or [])])
            t2i = o.directions["t2i"]
            assert all(c.rsplit("#", 1)[0] == u for c, u in zip(t2i.ids, t2i.unit, strict=True))
        elif spec.protocol == "class_reed":
            assert sorted(keyed.tolist()) == sorted([*(spec.query_ids or []), *(spec.gallery_names or [])])
        else:
            assert sorted(keyed.tolist()) == sorted(ids)


@pytest.mark.parametrize("name", ["synth-person", "synth-scenes", "synth-cir"])
def test_synthetic_datamodules_have_stable_ids(name: str, tmp_path: Path) -> None:
    from fgbench.registry import DATAMODULES as REGISTRY
    from tests.test_synthetic import MINI

    make = lambda: REGISTRY.get(name)(root=str(tmp_path), sizes=MINI[name])  # noqa: E731
    first, again = make(), make()
    for split in first.loaded.eval_sets:
        spec = first.evaluation_set(split).spec
        ids = spec.query_ids
        assert ids is not None and len(set(ids)) == len(ids) == spec.n_query
        assert ids == again.evaluation_set(split).spec.query_ids
        if spec.query_labels is not None and spec.protocol != "coco_1k_5fold":
            rng = np.random.default_rng(1)
            o = check_decomposes(evaluate(tied(rng, spec.n_query, spec.n_gallery), spec))
            assert o.info["ids"] == "dataset"


def test_number_repeats_numbers_in_file_order_and_names_the_file() -> None:
    assert number_repeats(["a", "b", "a", "a"], "f.json") == ["a", "b", "a~2", "a~3"]
    with pytest.raises(DatasetFormatError, match=r"f\.json: 1 query ids repeat .*'a~2'"):
        number_repeats(["a", "a", "a~2"], "f.json")


def test_same_outcomes_give_the_same_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    S = tied(rng, 9, 9)
    spec = EvalSpec("person_t2i", torch.arange(9), torch.arange(9), info={"split": "test"})
    a = save_outcomes(tmp_path / "a.npz", evaluate(S, spec).outcomes)  # type: ignore[arg-type]
    b = save_outcomes(tmp_path / "b.npz", evaluate(S, spec, block_rows=2).outcomes)  # type: ignore[arg-type]
    assert a.read_bytes() == b.read_bytes()
    with np.load(a, allow_pickle=False) as z:  # plain arrays, no pickles
        assert all(z[k].dtype != object for k in z.files)


# -- runs store them ------------------------------------------------------------------------------------


def test_fit_and_retests_write_outcomes_beside_their_results(tmp_path: Path) -> None:
    from test_run_records import _args, _run_dirs

    from fgbench.cli import main

    from fixtures.person import write_rstpreid

    data, runs = tmp_path / "data", tmp_path / "runs"
    write_rstpreid(data, n_train=6, n_val=2, n_test=3)
    assert main(["fit", *_args(data, runs, "--trainer.max_epochs", "1")]) == 0
    (run,) = _run_dirs(runs)
    record = json.loads((run / "result.json").read_text())
    assert record["outcomes"] == {"test": "outcomes.test.npz"}
    path = run / "outcomes.test.npz"
    o = load_outcomes(path)
    assert (o.protocol, o.split, o.info["ids"], o.info["dataset"]) == (
        "person_t2i",
        "test",
        "dataset",
        "rstpreid",
    )
    assert len(o.directions["t2i"].ids) == 3 * 5 * 2  # 3 test persons x 5 images x 2 captions
    for key, value in record["metrics"].items():
        assert metric_values(o, key).values.mean() == pytest.approx(value, rel=1e-9, abs=1e-9), key
    first = path.read_bytes()
    ckpt, config = str(run / "checkpoints" / "last.ckpt"), str(run / "config.yaml")
    # a re-test of the run (an old run's re-test adds them): the same file, byte for byte
    path.unlink()
    assert main(["test", "--config", config, "--ckpt_path", ckpt]) == 0
    assert path.read_bytes() == first
    retested = json.loads((run / "result.json").read_text())
    assert retested["outcomes"] == record["outcomes"] and retested["config_hash"] == record["config_hash"]
    assert _run_dirs(runs) == [run]  # the run's identity (its folder's hash) is unchanged
    # a variant files its own beside result.<variant>.json, never over the run's
    assert main(["test", "--config", config, "--ckpt_path", ckpt, "--run.variant", "again"]) == 0
    named = json.loads((run / "result.again.json").read_text())
    assert named["outcomes"] == {"test": "outcomes.test.again.npz"}
    assert (run / "outcomes.test.again.npz").read_bytes() == first  # same weights, same outcomes
    assert path.read_bytes() == first
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temp file left


def test_retest_of_a_variant_run_updates_its_own_result(tmp_path: Path) -> None:
    from experiments.leaderboard_stats import load_row_outcomes

    """A run trained with `--run.variant` and re-tested from its own config (which carries the label) is a
    re-test of that run: result.json gains the test and the outcomes, no result.<variant>.json appears (a
    second file would count the run twice in a leaderboard)."""
    from test_run_records import _args, _run_dirs

    from fgbench.cli import main

    from fixtures.person import write_rstpreid

    data, runs = tmp_path / "data", tmp_path / "runs"
    write_rstpreid(data, n_train=6, n_val=2, n_test=3)
    assert main(["fit", *_args(data, runs, "--trainer.max_epochs", "1", "--run.variant", "abl")]) == 0
    (run,) = _run_dirs(runs)
    assert json.loads((run / "result.json").read_text())["outcomes"] == {"test": "outcomes.test.npz"}
    first = (run / "outcomes.test.npz").read_bytes()
    (run / "outcomes.test.npz").unlink()  # an old run, from before outcomes
    ckpt, config = str(run / "checkpoints" / "last.ckpt"), str(run / "config.yaml")
    assert main(["test", "--config", config, "--ckpt_path", ckpt]) == 0
    record = json.loads((run / "result.json").read_text())
    assert record["variant"] == "abl" and len(record["tests"]) == 1
    assert not record["tests"][0]["changed_metrics"]
    assert (run / "outcomes.test.npz").read_bytes() == first
    assert sorted(p.name for p in run.glob("result*.json")) == ["result.json"]
    assert sorted(p.name for p in run.glob("outcomes*")) == ["outcomes.test.npz"]
    # the leaderboard and experiments.compare find them (named by result.json), for the method[abl] row
    from experiments import compare
    from experiments import leaderboard as lb

    lb.build(runs, tmp_path / "lb", resamples=99)
    (row,) = pd.read_csv(tmp_path / "lb" / "leaderboards" / "rstpreid.csv").to_dict("records")
    assert row["method"].endswith("[abl]") and np.isfinite(row["R1_ci_low"]), row
    side = compare.from_run_dir(run)
    assert len(load_row_outcomes(side.seeds, "test")[0].directions["t2i"].ids) == 30


def test_evaluate_cli_writes_outcomes_keyed_by_names(tmp_path: Path) -> None:
    from fgbench.cli import main

    rng = np.random.default_rng(8)
    np.save(tmp_path / "S.npy", rng.normal(size=(4, 20)).astype(np.float32))  # 4 images x 5 captions
    (tmp_path / "images.txt").write_text("".join(f"im{i}\n" for i in range(4)))
    (tmp_path / "captions.txt").write_text("".join(f"im{c // 5}#{c % 5}\n" for c in range(20)))
    out = tmp_path / "o.npz"
    args = ["evaluate", "--protocol", "f30k_1k", "--scores", str(tmp_path / "S.npy"), "--outcomes", str(out)]
    names = ["--names", str(tmp_path / "images.txt"), str(tmp_path / "captions.txt")]
    assert main([*args, *names, "--json", str(tmp_path / "m.json")]) == 0
    o = load_outcomes(out)
    assert o.directions["i2t"].ids.tolist() == [f"im{i}" for i in range(4)] and o.info["ids"] == "dataset"
    rsum = json.loads((tmp_path / "m.json").read_text())["metrics"]["rsum"]
    assert metric_values(o, "rsum").values.mean() == pytest.approx(rsum)


def test_cirr_repeated_pair_id_is_numbered_where_scored_and_kept_for_the_submission(tmp_path: Path) -> None:
    from datamodules.cirr import CIRRDataModule
    from tests.fixtures.composed import write_cirr

    root = write_cirr(tmp_path)
    val = next(root.rglob("cap.rc2.val.json"))
    entries = json.loads(val.read_text())
    val.write_text(json.dumps([*entries, entries[0]]))
    dm = CIRRDataModule(root=str(tmp_path))
    ids = dm.evaluation_set("val").spec.query_ids
    pid = str(entries[0]["pairid"])
    assert ids is not None and ids[0] == pid and ids[-1] == f"{pid}~2" and len(set(ids)) == len(ids)
    assert dm.loaded.quirks["val"]["duplicate_pairid"]["count"] == 1
