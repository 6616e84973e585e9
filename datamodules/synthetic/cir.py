"""synth-cir: composed retrieval over scenes of shapes, written as CIRR (docs/data/composed.md).

Each image set is a star around a reference: the target and four near-duplicates each differ from the
reference by one edit described in text (change a colour, add, remove or move an object, change a size),
each a different edit. Every member is as close to the reference as the target is, so image similarity to
the reference cannot find the target: only the modification text can (version 1 made the near-duplicates
edits of the target, two edits from the reference, and an image-only query nearly matched the full model).
They are the hard negatives of Recall_subset (NSFSE's setting). With `queries_per_set=2` the set also
yields the query reference -> first near-duplicate, whose text describes that edit.
Output: `cirr/captions/cap.rc2.<split>.json`,
`cirr/image_splits/split.rc2.<split>.json` and PNG images under `train/<k>/`, `dev/` (split "val") and
`test1/`; test1 queries carry no target fields.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.synthetic.common import RECORD_FILE, make_rng, pick, save_png, write_json
from datamodules.synthetic.objects import (
    CANVAS,
    COLOURS,
    MARGIN,
    RADIUS,
    Obj,
    draw_scene,
    noun_phrase,
    random_object,
    random_scene,
    valid,
)

NAME = "synth-cir"
VERSION = 2  # 2: near-duplicates are edits of the reference (star), not of the target
DEFAULT_SIZES = {"train_sets": 1000, "val_sets": 150, "test1_sets": 150, "queries_per_set": 2}
SPLITS = (("train", "train_sets"), ("val", "val_sets"), ("test1", "test1_sets"))
SET_SIZE = 6
MAX_OBJECTS = 4
MOVE_MIN = 16.0  # pixels a "move" shifts an object's centre in the stated direction (at least)
TRAIN_FOLDER_SETS = 100  # image sets per numbered train sub-folder (CIRR keeps NLVR2's train/<k>/)

# kind -> templates; {obj} names an object of the reference ("the red circle"), {new} the new value
TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("make {obj} {new}", "change {obj} to {new}", "turn {obj} {new}", "paint {obj} {new}"),
    "add": ("add {new}", "put {new} in the picture", "insert {new}"),
    "remove": ("remove {obj}", "take away {obj}", "delete {obj}", "get rid of {obj}"),
    "move": ("move {obj} {new}", "shift {obj} {new}", "push {obj} {new}"),
    "size": ("make {obj} {new}",),
}
SIZE_CHANGE: dict[str, tuple[str, ...]] = {"large": ("bigger", "larger"), "small": ("smaller",)}
DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "leftwards"),
    "right": ("to the right", "rightwards"),
    "up": ("up", "upwards"),
    "down": ("down", "downwards"),
}
_AXIS = {"left": (0, -1.0), "right": (0, 1.0), "up": (1, -1.0), "down": (1, 1.0)}  # (0 = x, 1 = y), sign


def _recoloured(rng: np.random.Generator, objs: list[Obj], i: int) -> tuple[list[Obj], str] | None:
    o = objs[i]
    taken = {x.key for x in objs}
    free = [c for c in COLOURS if (c, o.shape) not in taken]
    if not free:
        return None
    new = pick(rng, free)
    return [replace(o, colour=new) if j == i else x for j, x in enumerate(objs)], new


def _resized(objs: list[Obj], i: int) -> tuple[list[Obj], str] | None:
    new = next(s for s in RADIUS if s != objs[i].size)
    out = [replace(x, size=new) if j == i else x for j, x in enumerate(objs)]
    return (out, new) if valid(out) else None


def _moved(rng: np.random.Generator, objs: list[Obj], i: int) -> tuple[list[Obj], str] | None:
    """Object i moved at least MOVE_MIN pixels along one axis (the other coordinate kept)."""
    o = objs[i]
    direction = pick(rng, tuple(_AXIS))
    axis, sign = _AXIS[direction]
    lo, hi = MARGIN + RADIUS[o.size], CANVAS - MARGIN - RADIUS[o.size]
    start = (o.cx, o.cy)[axis]
    span = (lo, start - MOVE_MIN) if sign < 0 else (start + MOVE_MIN, hi)
    if span[0] > span[1]:
        return None
    for _ in range(30):
        value = round(float(rng.uniform(*span)), 1)
        new = replace(o, cx=value) if axis == 0 else replace(o, cy=value)
        out = [new if j == i else x for j, x in enumerate(objs)]
        if valid(out):
            return out, direction
    return None


def random_edit(rng: np.random.Generator, objs: list[Obj]) -> tuple[list[Obj], dict[str, Any], str] | None:
    """One random edit of a scene: (edited objects, the edit as a record, its text), or None if the drawn
    edit does not apply (e.g. no free place)."""
    kind = pick(rng, tuple(TEMPLATES))
    template = pick(rng, TEMPLATES[kind])
    if kind == "add":
        if len(objs) >= MAX_OBJECTS:
            return None
        new_obj = random_object(rng, objs)
        if new_obj is None:
            return None
        edit = {"kind": "add", "object": [new_obj.colour, new_obj.shape], "size": new_obj.size}
        return [*objs, new_obj], edit, template.format(new=noun_phrase(rng, new_obj, True))
    i = int(rng.integers(len(objs)))
    name = noun_phrase(rng, objs[i], rng.random() < 0.3, definite=True)
    edit: dict[str, Any] = {"kind": kind, "object": [objs[i].colour, objs[i].shape]}
    if kind == "remove":
        if len(objs) < 2:
            return None
        return objs[:i] + objs[i + 1 :], edit, template.format(obj=name)
    changed = {
        "colour": lambda: _recoloured(rng, objs, i),
        "size": lambda: _resized(objs, i),
        "move": lambda: _moved(rng, objs, i),
    }[kind]()
    if changed is None:
        return None
    out, new = changed
    edit["new"] = new
    words = {"colour": (new,), "size": SIZE_CHANGE.get(new), "move": DIRECTIONS.get(new)}[kind]
    return out, edit, template.format(obj=name, new=pick(rng, words))


def _signature(objs: list[Obj]) -> tuple[Any, ...]:
    return tuple(sorted((o.shape, o.colour, o.size, o.cx, o.cy) for o in objs))


Edited = tuple[list[Obj], dict[str, Any], str]  # (objects, the edit as a record, its text)


def _edit_until(rng: np.random.Generator, objs: list[Obj], avoid: set[tuple[Any, ...]]) -> Edited:
    """A random edit of `objs` whose result is none of the scenes in `avoid`."""
    while True:
        result = random_edit(rng, objs)
        if result is not None and _signature(result[0]) not in avoid:
            return result


def image_set(rng: np.random.Generator) -> tuple[list[Obj], list[Edited]]:
    """Six distinct scenes: the reference, then five edits of it (the target first, then the near-duplicates),
    each one edit away from the reference."""
    ref = random_scene(rng, int(rng.integers(2, MAX_OBJECTS + 1)))
    edited: list[Edited] = []
    seen = {_signature(ref)}
    while len(edited) < SET_SIZE - 1:
        edited.append(_edit_until(rng, ref, seen))
        seen.add(_signature(edited[-1][0]))
    return ref, edited


def _image_path(split: str, set_id: int, k: int) -> tuple[str, str]:
    """(name, "./<folder>/<name>.png") in CIRR's naming; val images live in dev/."""
    prefix = "dev" if split == "val" else split
    name = f"{prefix}-{set_id}-{k}-img0"
    folder = f"train/{set_id // TRAIN_FOLDER_SETS}" if split == "train" else prefix
    return name, f"./{folder}/{name}.png"


def _query(
    pairid: int, set_id: int, names: list[str], order: list[int], pair: tuple[int, int], text: str, split: str
) -> dict[str, Any]:
    """One cap.rc2 entry for (reference, target) = `pair` (indices into `names`); test1 lacks the target."""
    ref, tgt = pair
    members = [names[k] for k in order]
    img_set = {"id": set_id, "members": members, "reference_rank": order.index(ref)}
    entry: dict[str, Any] = {"pairid": pairid, "reference": names[ref], "caption": text, "img_set": img_set}
    if split != "test1":
        entry["target_hard"] = names[tgt]
        entry["target_soft"] = {names[tgt]: 1.0}
        img_set["target_rank"] = order.index(tgt)
    return entry


def write(
    out: Path, seed: int, train_sets: int, val_sets: int, test1_sets: int, queries_per_set: int
) -> dict[str, dict[str, int]]:
    """Render the dataset into `out`; return the per-split counts."""
    if queries_per_set not in (1, 2):
        raise ValueError(f"{NAME}: queries_per_set must be 1 or 2, got {queries_per_set}")
    rng = make_rng(seed, NAME)
    sizes = {"train_sets": train_sets, "val_sets": val_sets, "test1_sets": test1_sets}
    record: dict[str, Any] = {"dataset": NAME, "format_version": VERSION, "images": {}, "edits": {}}
    counts: dict[str, dict[str, int]] = {}
    for split, key in SPLITS:
        paths: dict[str, str] = {}
        queries: list[dict[str, Any]] = []
        edits: list[dict[str, Any]] = []
        for set_id in range(sizes[key]):
            ref, edited = image_set(rng)
            names = []
            for k, objs in enumerate([ref, *(e[0] for e in edited)]):
                name, rel = _image_path(split, set_id, k)
                save_png(draw_scene(objs, rng, noise=0), out / rel)
                paths[name] = rel
                names.append(name)
                record["images"][name] = [o.to_record() for o in objs]
            order = [int(k) for k in rng.permutation(SET_SIZE)]
            for pair in ((0, 1), (0, 2))[:queries_per_set]:
                _, edit, text = edited[pair[1] - 1]
                queries.append(_query(len(queries), set_id, names, order, pair, text, split))
                edits.append({"edit": edit, "reference": names[pair[0]], "target": names[pair[1]]})
        write_json(queries, out / "cirr" / "captions" / f"cap.rc2.{split}.json")
        write_json(paths, out / "cirr" / "image_splits" / f"split.rc2.{split}.json")
        record["edits"][split] = edits
        counts[split] = {"queries": len(queries), "images": len(paths), "sets": sizes[key]}
    record["counts"] = counts
    write_json(record, out / RECORD_FILE)
    return counts
