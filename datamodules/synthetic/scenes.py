"""synth-scenes: 2-4 shapes per image with attributes and spatial relations, as Karpathy's Flickr30K.

Five captions per image name objects, attributes and relations ("a small red circle left of a blue
square"); about half the scenes come with a twin in the same split that differs only in one relation
(two objects swap places) or in one attribute of one object (TERAN's and RACG's fine-grained matching).
Output (docs/data/itm.md: the Karpathy JSON and the BUTD feature layouts): `dataset_flickr30k.json`,
`flickr30k-images/<filename>` and `features_36/bu_box/<imgid>.npy` ((n_objects, 4) float32 x1, y1, x2, y2 in
pixels; imgid = index in images[]).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.synthetic.common import (
    RECORD_FILE,
    join_words,
    make_rng,
    pick,
    sample,
    save_jpeg,
    write_json,
)
from datamodules.synthetic.objects import (
    COLOURS,
    RADIUS,
    SHAPES,
    Obj,
    draw_scene,
    noun_phrase,
    random_scene,
    valid,
)

NAME = "synth-scenes"
VERSION = 1
DEFAULT_SIZES = {"train_images": 1500, "val_images": 200, "test_images": 200}
CAPTIONS_PER_IMAGE = 5
TWIN_FRACTION = 0.5  # chance that a scene gets a hard-negative twin
MIN_SEPARATION = 6.0  # pixels between box centres for a relation to be stated

RELATIONS: dict[str, tuple[str, ...]] = {  # a REL b; true of the box centres (image y grows downwards)
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
LEFT_TO_RIGHT = "from left to right:"  # a listing in increasing x centre
NUMBERS = {2: "two", 3: "three", 4: "four"}


def true_relations(a: Obj, b: Obj) -> list[str]:
    """The relations `a REL b` that hold with at least MIN_SEPARATION pixels between the centres."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    found = {"left": dx, "right": -dx, "above": dy, "below": -dy}
    return [rel for rel, d in found.items() if d >= MIN_SEPARATION]


def relation_caption(rng: np.random.Generator, a: Obj, b: Obj, with_size: bool) -> str:
    """'A small red circle is left of a blue square.': a true relation of the pair, either way round (two
    valid objects are always MIN_SEPARATION apart on some axis)."""
    if rng.random() < 0.5:
        a, b = b, a
    rel = pick(rng, RELATIONS[pick(rng, true_relations(a, b))])
    first, second = noun_phrase(rng, a, with_size), noun_phrase(rng, b, with_size)
    text = pick(rng, ("{a} {r} {b}.", "there is {a} {r} {b}.", "{a} is {r} {b}.")).format(
        a=first, r=rel, b=second
    )
    return text[0].upper() + text[1:]


def listing_caption(rng: np.random.Generator, objs: list[Obj], with_size: bool, complete: bool) -> str:
    """The given objects, sometimes ordered from left to right; their number only when `complete` (the
    objects are all the scene has)."""
    ordered = sorted(objs, key=lambda o: o.cx)
    spaced = all(b.cx - a.cx >= MIN_SEPARATION for a, b in pairwise(ordered))
    if len(objs) > 1 and spaced and rng.random() < 0.4:
        return (
            f"{LEFT_TO_RIGHT.capitalize()} {join_words([noun_phrase(rng, o, with_size) for o in ordered])}."
        )
    items = join_words([noun_phrase(rng, o, with_size) for o in sample(rng, objs, len(objs))])
    templates = ("An image with {items}.", "{items} on a dark background.")
    template = pick(rng, ("{n} shapes: {items}.", *templates) if complete else templates)
    text = template.format(n=NUMBERS.get(len(objs)), items=items)
    return text[0].upper() + text[1:]


def captions_for(rng: np.random.Generator, objs: list[Obj], focus: tuple[int, int], sized: bool) -> list[str]:
    """Five captions: a full listing, the focus pair's relation, then relations or partial listings.

    The first two name exactly what a twin changes (an attribute, with sizes when `sized`, or the focus
    pair's relation), so each twin's captions tell it apart from the other.
    """
    a, b = objs[focus[0]], objs[focus[1]]
    captions = [
        listing_caption(rng, objs, True, True),
        relation_caption(rng, a, b, sized or rng.random() < 0.5),
    ]
    while len(captions) < CAPTIONS_PER_IMAGE:
        if rng.random() < 0.7:
            x, y = sample(rng, objs, 2)
            captions.append(relation_caption(rng, x, y, rng.random() < 0.5))
        else:
            subset = sample(rng, objs, int(rng.integers(1, len(objs) + 1)))
            captions.append(listing_caption(rng, subset, rng.random() < 0.5, len(subset) == len(objs)))
    return captions


def _changed(rng: np.random.Generator, objs: list[Obj], i: int, kind: str) -> list[Obj]:
    """`objs` with object i's colour, shape or size replaced by another value."""
    o = objs[i]
    if kind == "colour":
        new = replace(o, colour=pick(rng, [c for c in COLOURS if c != o.colour]))
    elif kind == "shape":
        new = replace(o, shape=pick(rng, [s for s in SHAPES if s != o.shape]))
    else:
        new = replace(o, size=next(s for s in RADIUS if s != o.size))
    return [new if j == i else x for j, x in enumerate(objs)]


def make_twin(
    rng: np.random.Generator, objs: list[Obj], focus: tuple[int, int]
) -> tuple[list[Obj], str] | None:
    """A scene differing from `objs` only in the focus pair's relation (they swap places) or in one
    attribute of the first focus object; None if no such change gives a valid scene."""
    i, j = focus
    for kind in sample(rng, ("relation", "colour", "shape", "size"), 4):
        if kind == "relation":
            a, b = objs[i], objs[j]
            twin = list(objs)
            twin[i], twin[j] = replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)
        else:
            twin = _changed(rng, objs, i, kind)
        if valid(twin):
            return twin, kind
    return None


@dataclass
class Scene:
    """One image to render: its objects, the pair its second caption relates, and its twin relation."""

    objs: list[Obj]
    focus: tuple[int, int]
    twin_kind: str | None = None  # set on the twin (which directly follows its original)
    sized: bool = False  # captions 1-2 must name sizes (the pair differs in a size)


def _scenes(rng: np.random.Generator, n: int) -> list[Scene]:
    """`n` scenes of 2-4 objects; about TWIN_FRACTION of them followed by a twin."""
    out: list[Scene] = []
    while len(out) < n:
        objs = random_scene(rng, int(rng.integers(2, 5)))
        scene = Scene(objs, (0, 1))  # objects are placed in random order: the first two are a random pair
        out.append(scene)
        twin = make_twin(rng, objs, scene.focus) if len(out) < n and rng.random() < TWIN_FRACTION else None
        if twin is not None:
            scene.sized = twin[1] == "size"
            out.append(Scene(twin[0], scene.focus, twin[1], scene.sized))
    return out


def tokens(raw: str) -> list[str]:
    """Karpathy-style tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", raw.lower())


def write(
    out: Path, seed: int, train_images: int, val_images: int, test_images: int
) -> dict[str, dict[str, int]]:
    """Render the dataset into `out`; return the per-split counts."""
    rng = make_rng(seed, NAME)
    images: list[dict[str, Any]] = []
    record: list[dict[str, Any]] = []
    counts: dict[str, dict[str, int]] = {}
    for split, n in (("train", train_images), ("val", val_images), ("test", test_images)):
        counts[split] = {"images": n, "captions": n * CAPTIONS_PER_IMAGE, "twins": 0}
        for scene in _scenes(rng, n):
            imgid, objs = len(images), scene.objs
            filename = f"{imgid:06d}.jpg"
            save_jpeg(draw_scene(objs, rng, noise=10), out / "flickr30k-images" / filename)
            boxes = np.asarray([o.box for o in objs], dtype=np.float32)
            (out / "features_36" / "bu_box").mkdir(parents=True, exist_ok=True)
            np.save(out / "features_36" / "bu_box" / f"{imgid}.npy", boxes)
            raws = captions_for(rng, objs, scene.focus, scene.sized)
            sentids = [imgid * CAPTIONS_PER_IMAGE + k for k in range(len(raws))]
            sentences = [
                {"raw": r, "tokens": tokens(r), "imgid": imgid, "sentid": s}
                for r, s in zip(raws, sentids, strict=True)
            ]
            images.append(
                {
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "sentids": sentids,
                    "sentences": sentences,
                }
            )
            twin_of = imgid - 1 if scene.twin_kind is not None else None
            objects = [o.to_record() for o in objs]
            record.append({"objects": objects, "twin_of": twin_of, "twin_kind": scene.twin_kind})
            counts[split]["twins"] += scene.twin_kind is not None
    write_json({"dataset": "flickr30k", "images": images}, out / "dataset_flickr30k.json")
    write_json(
        {"dataset": NAME, "format_version": VERSION, "counts": counts, "images": record}, out / RECORD_FILE
    )
    return counts
