"""Person DataModules (CUHK-PEDES, ICFG-PEDES, RSTPReid) on tiny datasets in the official formats."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from datamodules.person import (
    CUHKPedesDataModule,
    ICFGPedesDataModule,
    PersonDataModule,
    RSTPReidDataModule,
)
from fgbench.data.batches import PairBatch, TextBatch, VisualBatch
from fgbench.data.samplers import PKSampler
from fgbench.data.validation import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetQuirkError,
)
from fgbench.registry import DATAMODULES
from tests.fixtures import fails_then_skips
from tests.fixtures.person import (
    QUIRK_INJECTORS,
    PersonFixture,
    inject_quirk,
    write_cuhk,
    write_icfg,
    write_person,
    write_rstpreid,
)

FORMATS: dict[str, tuple[Callable[..., PersonFixture], type[PersonDataModule]]] = {
    "cuhk-pedes": (write_cuhk, CUHKPedesDataModule),
    "icfg-pedes": (write_icfg, ICFGPedesDataModule),
    "rstpreid": (write_rstpreid, RSTPReidDataModule),
}


def test_registered_by_name() -> None:
    assert DATAMODULES.get("cuhk-pedes") is CUHKPedesDataModule
    assert DATAMODULES.get("icfg-pedes") is ICFGPedesDataModule
    assert DATAMODULES.get("rstpreid") is RSTPReidDataModule


def test_rstpreid_end_to_end(tmp_path: Path) -> None:
    write_rstpreid(tmp_path)  # ids train 0-2, val 3-4, test 5-6; 5 images x 2 captions each
    dm = RSTPReidDataModule(root=str(tmp_path), batch_size=4)
    assert dm.check() == {
        s: {
            "images": 5 * n,
            "captions": 10 * n,
            "labels": n,
            "queries": 10 * n,
            "gallery": 0 if s == "train" else 5 * n,
            "missing": 0,
        }
        for s, n in [("train", 3), ("val", 2), ("test", 2)]
    }
    assert dm.num_classes == 3
    assert dm.loaded.quirks == {}  # the fixture holds none of the authors' irregular entries
    batches = list(dm.train_dataloader())
    assert len(batches) == 30 // 4
    b = batches[0]
    assert isinstance(b, PairBatch)
    assert b.visual.pixels is not None and b.visual.pixels.shape == (4, 3, 64, 64)
    ds = dm.train_dataset()
    labels = [ds[i]["label"] for i in range(len(ds))]
    image_index = [ds[i]["image_index"] for i in range(len(ds))]
    assert labels == [i // 10 for i in range(30)]  # train ids 0,1,2 are their own ranks
    assert image_index == [i // 2 for i in range(30)]  # running image index, two captions each
    seen = torch.cat([bb.index for bb in batches])
    assert all(bb.label.tolist() == [labels[int(i)] for i in bb.index] for bb in batches)
    assert len(set(seen.tolist())) == len(seen)


def test_rstpreid_eval_spec_and_loaders(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    dm = RSTPReidDataModule(root=str(tmp_path), eval_batch_size=7)
    spec = dm.evaluation_set("test").spec
    assert spec.protocol == "person_t2i"
    assert spec.gallery_labels.tolist() == [5] * 5 + [6] * 5  # raw ids, one item per image
    assert spec.query_labels is not None
    assert spec.query_labels.tolist() == [5] * 10 + [6] * 10  # one query per caption
    positives = spec.query_labels[:, None] == spec.gallery_labels[None, :]
    assert positives.sum(1).tolist() == [5] * 20  # every image of the same person
    assert spec.info["n_missing"] == 0 and spec.info["split"] == "test"
    queries, gallery = dm.test_dataloader()
    qb, gb = next(iter(queries)), next(iter(gallery))
    assert isinstance(qb, TextBatch) and isinstance(gb, VisualBatch)
    assert qb.text.raw[0] == fx.split("test")[0]["captions"][0]
    assert gb.visual.pixels is not None and gb.visual.pixels.shape == (7, 3, 64, 64)
    assert dm.evaluation_set("val").spec.gallery_labels.tolist() == [3] * 5 + [4] * 5


def test_rstpreid_reports_noisy_captions_and_keeps_them(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    fx.records[0]["captions"] = ["a man in a red coat", "A man in a red coat "]  # repeat (case/space)
    fx.records[1]["captions"] = ["一个男人 walks", "a man walks"]
    fx.rewrite()
    dm = RSTPReidDataModule(root=str(tmp_path))
    quirks = dm.loaded.quirks["train"]
    assert quirks["repeated_caption"]["count"] == 1 and quirks["non_ascii_caption"]["count"] == 1
    assert quirks["repeated_caption"]["examples"][0] == {
        "file": str(fx.annotation),
        "where": "entry 0",
        "field": "captions[1]",
        "value": "'A man in a red coat '",
    }
    assert dm.check()["train"]["captions"] == 30  # noisy captions are kept
    ds = dm.loaded.train
    assert ds is not None and ds.captions[:4] == fx.records[0]["captions"] + fx.records[1]["captions"]


def test_count_mismatch_warns_per_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_rstpreid(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fgbench.data"):
        warnings = RSTPReidDataModule(root=str(tmp_path)).loaded.warnings
    assert "rstpreid [train]: expected 3701 labels, found 3" in warnings
    assert "rstpreid [test]: expected 1000 gallery, found 10" in warnings
    assert "expected 37010 captions, found 30" in caplog.text


def test_old_rstpreid_split_is_an_error(tmp_path: Path) -> None:
    write_rstpreid(tmp_path, n_train=2, n_val=1, n_test=100, images_per_id=1, captions_per_image=1)
    with pytest.raises(DatasetFormatError, match="old RSTPReid split: re-download"):
        RSTPReidDataModule(root=str(tmp_path)).setup()


class SynthLike(RSTPReidDataModule):
    """What synth-person does: RSTPReid's format under another folder, no old-split detection."""

    name: ClassVar[str] = "synth-like"
    folder: ClassVar[str] = "synth-like-v1"
    detect_old_split: ClassVar[bool] = False
    expected: ClassVar[dict[str, dict[str, int | None]]] = {}


def test_subclass_reads_its_own_folder(tmp_path: Path) -> None:
    write_rstpreid(tmp_path, n_test=100, images_per_id=1, captions_per_image=1, folder="synth-like-v1")
    dm = SynthLike(root=str(tmp_path))
    assert dm.check()["test"]["labels"] == 100 and dm.loaded.warnings == []
    with pytest.raises(DatasetNotFoundError, match="synth-like-v1/data_captions.json"):
        SynthLike(root=str(tmp_path / "elsewhere")).setup()


def test_cuhk_labels_and_val(tmp_path: Path) -> None:
    write_cuhk(tmp_path)  # ids train 1-3, val 4-5, test 6-7, 2 images x 2 captions
    dm = CUHKPedesDataModule(root=str(tmp_path))
    stats = dm.check()
    assert stats["val"]["images"] == 4 and stats["val"]["queries"] == 8
    ds = dm.loaded.train
    assert ds is not None
    assert sorted(set(ds.labels)) == [0, 1, 2]  # CUHK ids start at 1: label = id - 1
    assert dm.evaluation_set("val").spec.gallery_labels.tolist() == [4, 4, 5, 5]
    assert dm.loaded.quirks == {}


@pytest.mark.parametrize(
    ("dataset", "bad", "valid"),
    [
        ("rstpreid", "validation", "'train' or 'val' or 'test'"),
        ("cuhk-pedes", "Train", "'train' or 'val' or 'test'"),
        ("icfg-pedes", "val", "'train' or 'test'"),  # ICFG-PEDES has no val split
    ],
)
def test_undefined_split_value_is_an_error(tmp_path: Path, dataset: str, bad: str, valid: str) -> None:
    writer, module = FORMATS[dataset]
    fx = writer(tmp_path)
    moved = [r for r in fx.records if r["split"] == "test"][:3]
    for rec in moved:
        rec["split"] = bad
    fx.rewrite()
    first = fx.records.index(moved[0])
    with pytest.raises(DatasetFormatError) as err:
        module(root=str(tmp_path)).setup()
    msg = str(err.value)
    assert f"{fx.annotation.name}, entry {first}, field 'split': split value {bad!r}" in msg
    assert "(3 entries); values found: " in msg and f"{bad!r} x3" in msg and "'train' x" in msg
    assert f"(expected {valid}; anosorae/IRRA would silently read every other value as val)" in msg


def test_train_id_gaps_are_read_as_ranks_and_reported(tmp_path: Path) -> None:
    write_person(tmp_path / "RSTPReid", "data_captions.json", "img_path", {"train": [2, 7, 9], "test": [1]})
    dm = RSTPReidDataModule(root=str(tmp_path))
    ds = dm.loaded.train
    assert ds is not None and ds.labels == [0] * 4 + [1] * 4 + [2] * 4  # ranks of 2, 7, 9
    gaps = dm.loaded.quirks["train"]["train_id_gap"]
    assert gaps["count"] == 3  # no 0..1, no 3..6, no 8
    assert [e["value"] for e in gaps["examples"]] == ["'no id 0..1'", "'no id 3..6'", "'no id 8'"]
    with pytest.raises(DatasetQuirkError, match=r"training ids, field 'id': training ids that are not"):
        RSTPReidDataModule(root=str(tmp_path), strict=True).setup()


def test_cuhk_caption_all_json_is_explained(tmp_path: Path) -> None:
    (tmp_path / "CUHK-PEDES").mkdir()
    (tmp_path / "CUHK-PEDES" / "caption_all.json").write_text("[]", encoding="utf-8")
    with pytest.raises(DatasetNotFoundError) as err:
        CUHKPedesDataModule(root=str(tmp_path)).setup()
    msg = str(err.value)
    assert "caption_all.json" in msg and "no 'split' field" in msg and "reid_raw.json" in msg


def test_cuhk_renamed_file_needs_split(tmp_path: Path) -> None:
    fx = write_cuhk(tmp_path)
    renamed = fx.annotation.rename(fx.base / "CUHK-PEDES.json")
    assert CUHKPedesDataModule(root=str(tmp_path)).check()["train"]["labels"] == 3
    recs = fx.records
    del recs[2]["split"]
    renamed.write_text(json.dumps(recs), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"CUHK-PEDES\.json, entry 2, field 'split'"):
        CUHKPedesDataModule(root=str(tmp_path)).setup()


def test_icfg_has_no_val_unless_selecting_on_test(tmp_path: Path) -> None:
    write_icfg(tmp_path)
    dm = ICFGPedesDataModule(root=str(tmp_path))
    assert sorted(dm.check()) == ["test", "train"]
    assert dm.evaluation_set("test").spec.info["selected_on"] == "last_epoch"
    with pytest.raises(RuntimeError, match="no val split.*select_on_test=True"):
        dm.val_dataloader()
    sel = ICFGPedesDataModule(root=str(tmp_path), select_on_test=True)
    assert len(sel.val_dataloader()) == 2
    assert sel.evaluation_set(sel.val_split).spec.info["selected_on"] == "test"
    with pytest.raises(ValueError, match="select_on_test"):
        ICFGPedesDataModule(root=str(tmp_path), val_split="test")


def test_icfg_underscore_name_accepted_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = write_icfg(tmp_path)
    fx.annotation.rename(fx.base / "ICFG_PEDES.json")
    with caplog.at_level(logging.WARNING, logger="fgbench.data"):
        stats = ICFGPedesDataModule(root=str(tmp_path)).check()
    assert stats["test"]["queries"] == 4
    assert "ICFG_PEDES.json" in caplog.text and "ICFG-PEDES.json" in caplog.text


def test_missing_root_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        ICFGPedesDataModule(root=str(tmp_path)).setup()
    assert str(tmp_path / "ICFG-PEDES") in str(err.value)
    assert "<root>/ICFG-PEDES/imgs/{train,test}/..." in str(err.value)


def test_missing_images_raise_or_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fx = write_cuhk(tmp_path)
    gone = [fx.image(fx.split("test")[0]), fx.image(fx.split("train")[1])]
    dm, message = fails_then_skips(functools.partial(CUHKPedesDataModule, root=str(tmp_path)), gone, "1 of 6")
    assert str(gone[1]) in message
    with caplog.at_level(logging.WARNING, logger="fgbench.data"):
        stats = dm.check()
    assert "skip_missing=True drops 1 of 4" in caplog.text
    assert stats["test"] | {"missing": stats["test"]["missing"]} == {
        "images": 4,
        "captions": 8,
        "labels": 2,
        "queries": 6,
        "gallery": 3,
        "missing": 1,
    }
    assert stats["train"]["queries"] == 10 and stats["train"]["missing"] == 1
    spec = dm.evaluation_set("test").spec
    assert spec.info["n_missing"] == 1 and spec.gallery_labels.tolist() == [6, 7, 7]
    assert dm.loaded.missing["test"] == [str(gone[0])]
    ds = dm.loaded.train
    assert ds is not None and max(ds.image_index) == 4  # running index over the 5 kept images


def test_malformed_json_names_file_and_position(tmp_path: Path) -> None:
    fx = write_rstpreid(tmp_path)
    fx.annotation.write_text('[\n {"id": 0,\n  "split": "train" "captions": []}]', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"data_captions\.json, line 3, column"):
        RSTPReidDataModule(root=str(tmp_path)).setup()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("img_path", None, r"entry 3, field 'img_path': missing field"),
        ("id", "seven", r"entry 3, field 'id': id 'seven' is not a number \(expected int\)"),
        ("id", 7.0, r"entry 3, field 'id': wrong type float \(expected int or str\)"),
        ("id", True, r"entry 3, field 'id': wrong type bool"),
        ("captions", "a man", r"entry 3, field 'captions': wrong type str"),
        ("captions", ["ok", None], r"entry 3, field 'captions\[1\]': caption is NoneType \(expected str\)"),
        ("split", 1, r"entry 3, field 'split': wrong type int"),
    ],
)
def test_bad_entry_names_file_entry_and_field(tmp_path: Path, field: str, value: object, match: str) -> None:
    fx = write_rstpreid(tmp_path)
    recs = fx.records
    if value is None:
        del recs[3][field]
    else:
        recs[3][field] = value
    fx.annotation.write_text(json.dumps(recs), encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=r"data_captions\.json, " + match):
        RSTPReidDataModule(root=str(tmp_path)).setup()


def test_pk_sampler_option(tmp_path: Path) -> None:
    write_rstpreid(tmp_path, n_train=4)
    dm = RSTPReidDataModule(root=str(tmp_path), batch_size=4, sampler="pk", pk_k=2)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, PKSampler)
    for b in loader:
        counts = torch.bincount(b.label, minlength=4)
        assert sorted(counts.tolist()) == [0, 0, 2, 2]  # P=2 identities x K=2
    with pytest.raises(ValueError, match="sampler must be one of"):
        RSTPReidDataModule(root=str(tmp_path), sampler="balanced")


# -- the authors' irregular entries, read as anosorae/IRRA reads them ------------------------------------
def irra_reading(fx: PersonFixture) -> tuple[list[tuple[int, int, str]], dict[str, dict[str, list[Any]]]]:
    """What anosorae/IRRA's person loaders build from the records as written.

    Train: (label, image index, caption) per caption, the image index counting every train entry; IRRA's
    label is id - first id, which equals the rank below whenever its contiguity assertion holds. Eval
    splits: one gallery item per entry (raw id, path) and one query per caption (text, raw id).
    """
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "test": [], "val": []}
    for rec in fx.records:
        by_split[rec["split"] if rec["split"] in ("train", "test") else "val"].append(rec)
    ids = sorted({int(r["id"]) for r in by_split["train"]})
    train = [(ids.index(int(r["id"])), n, c) for n, r in enumerate(by_split["train"]) for c in r["captions"]]
    evals = {
        split: {
            "gallery": [int(r["id"]) for r in recs],
            "paths": [fx.image(r) for r in recs],
            "queries": [c for r in recs for c in r["captions"]],
            "query_ids": [int(r["id"]) for r in recs for c in r["captions"]],
        }
        for split, recs in by_split.items()
        if split != "train" and recs
    }
    return train, evals


@pytest.mark.parametrize("kind", sorted(QUIRK_INJECTORS))
@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_quirk_is_read_as_irra_reads_it_and_reported(tmp_path: Path, dataset: str, kind: str) -> None:
    writer, module = FORMATS[dataset]
    fx = writer(tmp_path)
    reports = inject_quirk(fx, kind)
    dm = module(root=str(tmp_path))
    found = {(s, k): v["count"] for s, kinds in dm.loaded.quirks.items() for k, v in kinds.items()}
    assert found == reports
    assert kind in {k.kind for k in module.quirk_kinds}
    train, evals = irra_reading(fx)
    ds = dm.loaded.train
    assert ds is not None and list(zip(ds.labels, ds.image_index, ds.captions, strict=True)) == train
    assert sorted(dm.loaded.eval_sets) == sorted(evals)
    stats = dm.check()
    for split, want in evals.items():
        es = dm.evaluation_set(split)
        assert es.spec.gallery_labels.tolist() == want["gallery"]
        assert es.gallery.store.paths == want["paths"]  # type: ignore[attr-defined]
        assert es.queries.captions == want["queries"]  # type: ignore[attr-defined]
        assert es.spec.query_labels is not None and es.spec.query_labels.tolist() == want["query_ids"]
        assert (stats[split]["gallery"], stats[split]["queries"]) == (
            len(want["gallery"]),
            len(want["queries"]),
        )
    assert stats["train"]["queries"] == len(train)
    with pytest.raises(DatasetQuirkError, match=rf"{fx.annotation.name}, .*strict=True refuses quirks"):
        module(root=str(tmp_path), strict=True).setup()


def test_every_declared_quirk_kind_has_an_injector() -> None:
    for _, module in FORMATS.values():
        assert {k.kind for k in module.quirk_kinds} == set(QUIRK_INJECTORS)


def test_quirks_survive_skip_missing_and_reach_the_record(tmp_path: Path) -> None:
    fx = write_cuhk(tmp_path)
    inject_quirk(fx, "caption_count")
    fx.image(fx.split("test")[1]).unlink()
    dm = CUHKPedesDataModule(root=str(tmp_path), skip_missing=True)
    record = dm.loaded.record()
    assert record["quirks"]["test"]["caption_count"]["count"] == 1
    assert record["quirks"]["test"]["caption_count"]["examples"][0]["value"] == "'4 captions'"
    assert dm.check()["test"]["queries"] == 4 + 2 + 2  # the 4-caption image is kept, the missing one dropped
