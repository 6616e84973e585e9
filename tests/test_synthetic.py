"""The embedded synthetic benchmark: determinism, caching, official formats, and that every caption is true of
the image it describes (parsed back with the generators' own vocabulary and checked against the rendering
record and the written boxes)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datamodules.synthetic import cir, generate, objects, person, scenes
from datamodules.synthetic.__main__ import main as cli
from datamodules.synthetic.common import RECORD_FILE
from datamodules.synthetic.datamodules import SyntheticMixin
from datamodules.synthetic.oracle import parse_person, person_oracle, words_re
from fgbench.registry import DATAMODULES

TINY: dict[str, dict[str, int]] = {
    "synth-person": {"train_ids": 100, "val_ids": 10, "test_ids": 10, "images_per_id": 2},
    "synth-scenes": {"train_images": 80, "val_images": 20, "test_images": 20},
    "synth-cir": {"train_sets": 12, "val_sets": 8, "test1_sets": 6, "queries_per_set": 2},
}
MINI: dict[str, dict[str, int]] = {
    "synth-person": {"train_ids": 4, "val_ids": 2, "test_ids": 2, "images_per_id": 2},
    "synth-scenes": {"train_images": 6, "val_images": 3, "test_images": 3},
    "synth-cir": {"train_sets": 2, "val_sets": 2, "test1_sets": 1, "queries_per_set": 2},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {name: generate(name, root, seed=0, **sizes) for name, sizes in TINY.items()}


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- generation: determinism, caching, interruption ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(MINI))
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, name: str) -> None:
    a = generate(name, tmp_path / "a", seed=3, **MINI[name])
    b = generate(name, tmp_path / "b", seed=3, **MINI[name])
    c = generate(name, tmp_path / "c", seed=4, **MINI[name])
    assert a.name == b.name and a.name.startswith(f"{name}-v") and "-seed3" in a.name
    hashes = _hashes(a)
    assert hashes == _hashes(b)
    assert len(hashes) > 5
    other = _hashes(c)
    assert other.keys() == hashes.keys()
    assert sum(other[k] != hashes[k] for k in hashes) > len(hashes) // 2


def test_cached_copy_is_reused_and_sizes_name_the_folder(tmp_path: Path) -> None:
    first = generate("synth-scenes", tmp_path, **MINI["synth-scenes"])
    stamp = (first / "dataset_flickr30k.json").stat().st_mtime_ns
    assert generate("synth-scenes", tmp_path, **MINI["synth-scenes"]) == first
    assert (first / "dataset_flickr30k.json").stat().st_mtime_ns == stamp
    other = generate("synth-scenes", tmp_path, **{**MINI["synth-scenes"], "test_images": 4})
    assert other != first
    with pytest.raises(TypeError, match="valid"):
        generate("synth-scenes", tmp_path, train_ids=3)


def test_interrupted_generation_leaves_no_complete_looking_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(person, "write_json", fail)  # dies after the images, before the annotations
    with pytest.raises(KeyboardInterrupt):
        generate("synth-person", tmp_path, **MINI["synth-person"])
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    folder = generate("synth-person", tmp_path, **MINI["synth-person"])
    assert (folder / "data_captions.json").is_file() and [p.name for p in tmp_path.iterdir()] == [folder.name]


# -- official formats ----------------------------------------------------------------------------------


def test_person_matches_rstpreid_format(tiny: dict[str, Path]) -> None:
    folder = tiny["synth-person"]
    entries = _load(folder / "data_captions.json")
    assert isinstance(entries, list)
    split_of: dict[int, set[str]] = {}
    for e in entries:
        assert set(e) == {"id", "img_path", "captions", "split"}
        assert isinstance(e["id"], int) and isinstance(e["img_path"], str)
        assert e["split"] in {"train", "val", "test"}
        assert len(e["captions"]) == 2 and all(isinstance(c, str) and c for c in e["captions"])
        with Image.open(folder / "imgs" / e["img_path"]) as img:
            assert img.format == "JPEG" and img.size == (64, 128)
        split_of.setdefault(e["id"], set()).add(e["split"])
    assert sorted(split_of) == list(range(len(split_of)))  # contiguous from 0
    assert all(len(s) == 1 for s in split_of.values())  # split by identity
    ids_per_split = Counter(next(iter(s)) for s in split_of.values())
    sizes = TINY["synth-person"]
    assert ids_per_split == {s: sizes[f"{s}_ids"] for s in ("train", "val", "test")}
    assert Counter(e["id"] for e in entries) == dict.fromkeys(split_of, sizes["images_per_id"])


def test_scenes_match_karpathy_and_bu_box_format(tiny: dict[str, Path]) -> None:
    folder = tiny["synth-scenes"]
    data = _load(folder / "dataset_flickr30k.json")
    assert set(data) == {"dataset", "images"} and data["dataset"] == "flickr30k"
    for i, img in enumerate(data["images"]):
        assert set(img) == {"filename", "imgid", "split", "sentids", "sentences"}
        assert img["imgid"] == i and img["split"] in {"train", "val", "test"}
        assert [s["sentid"] for s in img["sentences"]] == img["sentids"] and len(img["sentids"]) == 5
        for s in img["sentences"]:
            assert set(s) == {"raw", "tokens", "imgid", "sentid"} and s["imgid"] == i
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
        assert (folder / "flickr30k-images" / img["filename"]).is_file()
        boxes = np.load(folder / "features_36" / "bu_box" / f"{i}.npy")
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert 2 <= len(boxes) <= 4
        assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    sentids = [s for img in data["images"] for s in img["sentids"]]
    assert len(set(sentids)) == len(sentids)


def test_cir_matches_cirr_format(tiny: dict[str, Path]) -> None:
    folder = tiny["synth-cir"]
    for split in ("train", "val", "test1"):
        queries = _load(folder / "cirr" / "captions" / f"cap.rc2.{split}.json")
        paths = _load(folder / "cirr" / "image_splits" / f"split.rc2.{split}.json")
        folder_re = {"train": r"\./train/\d+/train-", "val": r"\./dev/dev-", "test1": r"\./test1/test1-"}[
            split
        ]
        for name, rel in paths.items():
            assert re.fullmatch(folder_re + r"[\w-]+\.png", rel) and rel.endswith(f"/{name}.png")
            with Image.open(folder / rel) as img:
                assert img.format == "PNG"
        target_keys = {"target_hard", "target_soft"}
        for pairid, q in enumerate(queries):
            expected = {"pairid", "reference", "caption", "img_set"} | (
                target_keys if split != "test1" else set()
            )
            assert set(q) == expected and q["pairid"] == pairid and isinstance(q["caption"], str)
            s = q["img_set"]
            assert set(s) == {"id", "members", "reference_rank"} | (
                {"target_rank"} if split != "test1" else set()
            )
            assert len(s["members"]) == 6 == len(set(s["members"])) and set(s["members"]) <= set(paths)
            assert s["members"][s["reference_rank"]] == q["reference"]
            if split != "test1":
                assert q["target_soft"] == {q["target_hard"]: 1.0}
                assert s["members"][s["target_rank"]] == q["target_hard"] != q["reference"]


# -- synth-person: captions true, ambiguous alone, identifying together -----------------------------------


def _person_data(folder: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    entries = _load(folder / "data_captions.json")
    record = _load(folder / RECORD_FILE)["images"]
    people = {e["id"]: record[e["img_path"]]["attributes"] for e in entries}
    return entries, people


def test_person_captions_are_true_of_their_images(tiny: dict[str, Path]) -> None:
    entries, _ = _person_data(tiny["synth-person"])
    record = _load(tiny["synth-person"] / RECORD_FILE)["images"]
    for e in entries:
        attrs = record[e["img_path"]]["attributes"]
        for caption in e["captions"]:
            facts = parse_person(caption)
            groups = {field.rsplit("_", 1)[0] for field in facts}
            assert 2 <= len(groups) <= 4, caption
            assert {f: attrs[f] for f in facts} == facts, caption


def test_parse_person_rejects_a_misplaced_adjective() -> None:
    assert parse_person("A person with long blonde hair and no headwear.") == {
        "hair_length": "long",
        "hair_colour": "blonde",
        "hat_type": "none",
    }
    with pytest.raises(ValueError, match="'striped' cannot describe 'hair'"):
        parse_person("A person with striped hair.")


def test_person_captions_are_ambiguous_alone_and_identifying_together(tiny: dict[str, Path]) -> None:
    entries, people = _person_data(tiny["synth-person"])

    def fitting(facts: dict[str, str]) -> list[int]:
        return [pid for pid, a in people.items() if all(a[f] == v for f, v in facts.items())]

    captions = [(e["id"], c) for e in entries for c in e["captions"]]
    ambiguous = sum(len(fitting(parse_person(c))) > 1 for _, c in captions)
    assert ambiguous / len(captions) > 0.35  # about 0.7 at the default 528 ids
    union: dict[int, dict[str, str]] = {}
    for pid, c in captions:
        union.setdefault(pid, {}).update(parse_person(c))
    identified = sum(fitting(facts) == [pid] for pid, facts in union.items())
    assert identified / len(union) > 0.9


def test_attribute_oracle_equals_a_direct_count(tiny: dict[str, Path]) -> None:
    entries, people = _person_data(tiny["synth-person"])
    test = [e for e in entries if e["split"] == "test"]
    ids = [e["id"] for e in test]  # gallery: one row per test image
    record = _load(tiny["synth-person"] / RECORD_FILE)["images"]
    hits = []
    for e in test:
        for c in e["captions"]:
            facts = parse_person(c)
            attrs = [record[g["img_path"]]["attributes"] for g in test]
            fit = [i for i, a in zip(ids, attrs, strict=True) if all(a[f] == v for f, v in facts.items())]
            hits.append(fit.count(e["id"]) / len(fit))
    got = person_oracle(tiny["synth-person"])
    assert got["captions"] == len(hits) == 2 * len(test)
    assert got["R1"] == pytest.approx(100 * sum(hits) / len(hits))
    n_ids = len(set(ids))
    assert 100 / n_ids < got["R1"] < 100  # above chance (ambiguity is bounded), below 100 (it exists)
    assert cli(["oracle", "synth-person", "--root", str(tiny["synth-person"].parent)]) == 0


# -- synth-scenes: relations true of the boxes, twins differ in one thing -------------------------------

_SIZE = {w: v for v, ws in objects.SIZE_WORDS.items() for w in ws}
_COLOUR = {w: v for v, ws in objects.COLOUR_WORDS.items() for w in ws}
_SHAPE = {w: v for v, ws in objects.SHAPE_WORDS.items() for w in ws}
_MENTION_RE = re.compile(
    rf"(?:({words_re(list(_SIZE))}) )?({words_re(list(_COLOUR))}) ({words_re(list(_SHAPE))})"
)
_RELATION = {p: rel for rel, phrases in scenes.RELATIONS.items() for p in phrases}
_RELATION_RE = re.compile(f"({words_re(list(_RELATION))})")


def _mentioned(caption: str, objs: list[dict[str, Any]]) -> list[int]:
    """Indices of the objects a caption names; each mention must name exactly one object, truly."""
    found = []
    for m in _MENTION_RE.finditer(caption.lower()):
        size, colour, shape = _SIZE.get(m.group(1) or ""), _COLOUR[m.group(2)], _SHAPE[m.group(3)]
        hits = [
            i
            for i, o in enumerate(objs)
            if (o["colour"], o["shape"]) == (colour, shape) and size in (None, o["size"])
        ]
        assert len(hits) == 1, (caption, m.group(0))
        found.append(hits[0])
    return found


def _holds(rel: str, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether box a REL box b, by box centres (y grows downwards)."""
    (ax, ay), (bx, by) = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[rel]


def test_scene_captions_are_true_of_the_boxes(tiny: dict[str, Path]) -> None:
    folder = tiny["synth-scenes"]
    images = _load(folder / "dataset_flickr30k.json")["images"]
    record = _load(folder / RECORD_FILE)["images"]
    n_relations = 0
    for i, img in enumerate(images):
        objs = record[i]["objects"]
        boxes = np.load(folder / "features_36" / "bu_box" / f"{i}.npy")
        assert np.allclose(boxes, [o["box"] for o in objs], atol=0.01)
        for s in img["sentences"]:
            raw = s["raw"].lower()
            named = _mentioned(raw, objs)
            assert named, raw
            relations = _RELATION_RE.findall(raw)
            if relations:
                assert len(relations) == 1 and len(named) == 2, raw
                assert _holds(_RELATION[relations[0]], boxes[named[0]], boxes[named[1]]), raw
                n_relations += 1
            if raw.startswith(scenes.LEFT_TO_RIGHT):
                centres = [boxes[k, 0] + boxes[k, 2] for k in named]
                assert centres == sorted(centres), raw
            if " shapes: " in raw:
                assert sorted(named) == list(range(len(objs))), raw
                assert raw.split()[0] == scenes.NUMBERS[len(objs)], raw
    assert n_relations > len(images)


def test_scene_relation_check_can_fail() -> None:
    left, right = np.array([0, 0, 10, 10.0]), np.array([20, 0, 30, 10.0])
    assert _holds("left", left, right) and not _holds("left", right, left)
    assert not _holds("above", left, right) and not _holds("below", left, right)


def _scene_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """'relation' if two objects swapped places, else the one attribute one object changed, else 'other'."""
    changed = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    attrs = ("shape", "colour", "size")
    if len(changed) == 2:
        i, j = changed
        swapped = (a[i]["cx"], a[i]["cy"]) == (b[j]["cx"], b[j]["cy"]) and (a[j]["cx"], a[j]["cy"]) == (
            b[i]["cx"],
            b[i]["cy"],
        )
        same = all(a[k][f] == b[k][f] for k in changed for f in attrs)
        return "relation" if swapped and same else "other"
    if len(changed) == 1:
        x, y = a[changed[0]], b[changed[0]]
        diff = [f for f in attrs if x[f] != y[f]]
        same_place = (x["cx"], x["cy"]) == (y["cx"], y["cy"])
        return diff[0] if len(diff) == 1 and same_place else "other"
    return "other"


def test_scenes_contain_twins_differing_in_one_relation_or_attribute(tiny: dict[str, Path]) -> None:
    folder = tiny["synth-scenes"]
    images = _load(folder / "dataset_flickr30k.json")["images"]
    record = _load(folder / RECORD_FILE)["images"]
    kinds = Counter()
    for i, r in enumerate(record):
        if r["twin_of"] is None:
            continue
        j = r["twin_of"]
        assert images[i]["split"] == images[j]["split"]
        kind = _scene_diff(record[j]["objects"], r["objects"])
        assert kind == r["twin_kind"], (i, kind)
        kinds["relation" if kind == "relation" else "attribute"] += 1
        captions = {s["raw"] for s in images[i]["sentences"]}
        assert captions != {s["raw"] for s in images[j]["sentences"]}
    assert kinds["relation"] >= 2 and kinds["attribute"] >= 5


# -- synth-cir: the caption's edit turns the reference into the target ----------------------------------


_SIZE_CHANGE = {w: v for v, ws in cir.SIZE_CHANGE.items() for w in ws}
_DIRECTION = {w: v for v, ws in cir.DIRECTIONS.items() for w in ws}
_NEW_RE = {  # what {new} may be, per edit kind
    "colour": words_re(list(_COLOUR)),
    "size": words_re(list(_SIZE_CHANGE)),
    "move": words_re(list(_DIRECTION)),
    "add": ".+",
}


def _template_re(kind: str, template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{obj\}", "(?P<obj>.+)")
    return re.compile(pattern.replace(r"\{new\}", f"(?P<new>{_NEW_RE.get(kind, '')})"))


def _key(o: dict[str, Any]) -> tuple[Any, ...]:
    return (o["shape"], o["colour"], o["size"], o["cx"], o["cy"])


def apply_caption(
    caption: str, ref: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(edit kind, the reference's objects the edit keeps unchanged, what the edit must produce)."""
    for kind, templates in cir.TEMPLATES.items():
        for template in templates:
            m = _template_re(kind, template).fullmatch(caption)
            if m is None:
                continue
            new = m.groupdict().get("new")
            if kind == "add":
                obj = _MENTION_RE.fullmatch(new.split(" ", 1)[1])
                assert obj is not None and obj.group(1), caption
                made = {
                    "shape": _SHAPE[obj.group(3)],
                    "colour": _COLOUR[obj.group(2)],
                    "size": _SIZE[obj.group(1)],
                }
                return kind, ref, made
            (i,) = _mentioned(m.group("obj"), ref)
            kept = ref[:i] + ref[i + 1 :]
            if kind == "remove":
                return kind, kept, {}
            if kind == "move":
                return kind, kept, {**ref[i], "direction": _DIRECTION[new]}
            changed = {"colour": _COLOUR.get(new), "size": _SIZE_CHANGE.get(new)}[kind]
            return kind, kept, {**ref[i], kind: changed}
    raise AssertionError(f"unparsed edit {caption!r}")


def _check_edit(caption: str, ref: list[dict[str, Any]], target: list[dict[str, Any]]) -> str:
    kind, kept, made = apply_caption(caption, ref)
    extra = Counter(map(_key, target)) - Counter(map(_key, kept))
    assert Counter(map(_key, kept)) - Counter(map(_key, target)) == Counter(), (
        caption
    )  # the rest is unchanged
    new = [o for o in target if _key(o) in extra]
    if kind == "remove":
        assert not new and len(target) == len(ref) - 1, caption
    elif kind == "move":
        (o,) = new
        axis, sign = {"left": ("cx", -1), "right": ("cx", 1), "up": ("cy", -1), "down": ("cy", 1)}[
            made["direction"]
        ]
        other = "cy" if axis == "cx" else "cx"
        assert (o["shape"], o["colour"], o["size"], o[other]) == (
            made["shape"],
            made["colour"],
            made["size"],
            made[other],
        )
        assert sign * (o[axis] - made[axis]) >= cir.MOVE_MIN, caption
    else:
        (o,) = new
        assert {f: o[f] for f in ("shape", "colour", "size")} == {
            f: made[f] for f in ("shape", "colour", "size")
        }
        if kind != "add":
            assert (o["cx"], o["cy"]) == (made["cx"], made["cy"]), caption
    return kind


def _changed(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int:
    """How many objects of `a` are not in `b` (attributes and place)."""
    return sum((Counter(map(_key, a)) - Counter(map(_key, b))).values())


def test_cir_captions_turn_reference_into_target(tiny: dict[str, Path]) -> None:
    folder = tiny["synth-cir"]
    record = _load(folder / RECORD_FILE)
    images = record["images"]
    kinds: Counter[str] = Counter()
    for split in ("train", "val", "test1"):
        queries = _load(folder / "cirr" / "captions" / f"cap.rc2.{split}.json")
        for q, made in zip(queries, record["edits"][split], strict=True):
            target, members = made["target"], q["img_set"]["members"]
            assert made["reference"] == q["reference"] and q.get("target_hard", target) == target
            assert {q["reference"], target} <= set(members)
            kind = _check_edit(q["caption"], images[q["reference"]], images[target])
            assert kind == made["edit"]["kind"]
            kinds[kind] += 1
            for m in members:
                assert m == target or _changed(images[m], images[target]) + _changed(
                    images[target], images[m]
                )
            for m in members:  # a star: every other member is one edit of the reference, as the target is
                if m != q["reference"]:
                    ref_img = images[q["reference"]]
                    assert _changed(images[m], ref_img) <= 1 and _changed(ref_img, images[m]) <= 1
    assert set(kinds) == set(cir.TEMPLATES)


def test_cir_edit_check_can_fail() -> None:
    ref = [{"shape": "circle", "colour": "red", "size": "small", "cx": 20.0, "cy": 20.0, "box": []}]
    blue = [{**ref[0], "colour": "blue"}]
    assert _check_edit("make the red circle blue", ref, blue) == "colour"
    with pytest.raises(AssertionError):
        _check_edit("make the red circle green", ref, blue)
    with pytest.raises(AssertionError):
        _check_edit("move the red circle to the left", ref, [{**ref[0], "cx": 30.0}])


# -- command line and preview ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MINI))
def test_cli_generate_and_preview(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    sizes = [f"--size={k}={v}" for k, v in MINI[name].items()]
    cli(["generate", name, "--root", str(tmp_path), *sizes])
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == str(generate(name, tmp_path, **MINI[name]))
    assert "train:" in printed
    out = tmp_path / "preview.png"
    cli(["preview", name, "--root", str(tmp_path), "--out", str(out), *sizes])
    with Image.open(out) as img:
        assert img.width > 300 and img.height > 100


# -- registered DataModules read the generated folders through the real readers ---------------------------


@pytest.mark.parametrize("name", sorted(MINI))
def test_datamodule_generates_then_reads_through_the_real_reader(tmp_path: Path, name: str) -> None:
    cls = DATAMODULES.get(name)
    assert issubclass(cls, SyntheticMixin)
    dm = cls(root=str(tmp_path), seed=2, sizes=MINI[name], batch_size=2)
    dm.setup()
    assert dm.base == generate(name, tmp_path, seed=2, **MINI[name])
    assert not dm.loaded.warnings
    assert dm.loaded.stats["train"]["missing"] == 0 and dm.loaded.stats["train"]["queries"] > 0
    assert next(iter(dm.train_dataloader())) is not None


def _read(path: Path) -> object:
    import json

    return json.loads(path.read_text())


def test_synth_person_evalspec_matches_the_written_annotation(tmp_path: Path) -> None:
    dm = DATAMODULES.get("synth-person")(root=str(tmp_path), sizes=MINI["synth-person"])
    es = dm.evaluation_set("test")
    records = [r for r in _read(dm.base / "data_captions.json") if r["split"] == "test"]
    id_of_path = {r["img_path"]: r["id"] for r in records}
    ids_of_caption: dict[str, set[int]] = {}
    for r in records:
        for c in r["captions"]:
            ids_of_caption.setdefault(c, set()).add(r["id"])
    gallery_ids = [id_of_path[es.gallery.store.paths[j].name] for j in es.gallery.ids]
    assert es.spec.protocol == "person_t2i"
    assert es.spec.gallery_labels.tolist() == gallery_ids
    assert len(es.queries) == sum(len(r["captions"]) for r in records)
    for i, caption in enumerate(es.queries.captions):
        assert int(es.spec.query_labels[i]) in ids_of_caption[caption]


def test_synth_scenes_evalspec_rows_are_images(tmp_path: Path) -> None:
    dm = DATAMODULES.get("synth-scenes")(root=str(tmp_path), sizes=MINI["synth-scenes"])
    es = dm.evaluation_set("test")
    images = [im for im in _read(dm.base / "dataset_flickr30k.json")["images"] if im["split"] == "test"]
    assert es.spec.protocol == "f30k_1k" and es.spec.info["orientation"] == "rows=images"
    assert es.spec.query_labels.tolist() == list(range(len(images)))
    expected_caps = [(k, s["raw"].strip()) for k, im in enumerate(images) for s in im["sentences"][:5]]
    assert es.spec.gallery_labels.tolist() == [k for k, _ in expected_caps]
    assert es.queries.captions == [c for _, c in expected_caps]


def test_synth_cir_evalspec_targets_references_and_subsets(tmp_path: Path) -> None:
    dm = DATAMODULES.get("synth-cir")(root=str(tmp_path), sizes=MINI["synth-cir"])
    assert dm.test_split == "val"  # synth-cir tests on val: test1 has no targets, as in CIRR
    es = dm.evaluation_set(dm.test_split)
    caps = _read(dm.base / "cirr" / "captions" / "cap.rc2.val.json")
    names = es.spec.gallery_names
    assert es.spec.protocol == "cirr" and len(caps) == es.spec.n_query
    for q, c in enumerate(caps):
        assert names[int(es.spec.query_labels[q])] == c["target_hard"]
        assert names[int(es.spec.exclude[q])] == c["reference"]
        assert [names[int(j)] for j in es.spec.subsets[q]] == c["img_set"]["members"]
        assert es.spec.query_ids[q] == str(c["pairid"])


def test_synth_scenes_twins_sampler_batches_each_scene_with_its_twin(tmp_path: Path) -> None:

    from datamodules.synthetic.datamodules import SynthScenesDataModule

    sizes = {"train_images": 24, "val_images": 4, "test_images": 4}
    with pytest.raises(ValueError, match="sampler must be one of"):
        SynthScenesDataModule(root=str(tmp_path), sizes=sizes, sampler="pk")
    dm = SynthScenesDataModule(root=str(tmp_path), sizes=sizes, sampler="twins", batch_size=4)
    dm.setup("fit")
    sampler = dm.train_sampler(dm.loaded.train, 1, 0, 0)
    record = json.loads((dm.base / "render_record.json").read_text())["images"]
    pairs = [(i, im["twin_of"]) for i, im in enumerate(record[:24]) if im["twin_of"] is not None]
    assert pairs  # about half the scenes have a twin
    first_round = [dm.loaded.train.labels[i] for i in sampler.epoch_order()[:24]]  # one caption per scene
    assert sorted(first_round) == list(range(24))
    for a, b in pairs:
        assert abs(first_round.index(a) - first_round.index(b)) == 1
