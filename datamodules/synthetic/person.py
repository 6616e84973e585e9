"""synth-person: drawn pedestrians with partial, ambiguous captions, written as RSTPReid
(docs/data/person.md).

Each identity is a set of clothing and appearance attributes; each of its images draws it with another pose,
shift, scale, background and occluder. Each caption names only 2-4 attribute groups (MMRef's setting: one
caption fits several people, all captions of a person together pin it down). Output: `data_captions.json`
(JSON array of {"id", "img_path", "captions", "split"}) and `imgs/*.jpg`, 128x64 (height x width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datamodules.synthetic.common import (
    RECORD_FILE,
    RGB,
    join_words,
    make_rng,
    noisy_background,
    pick,
    sample,
    save_jpeg,
    uniform,
    write_json,
)

NAME = "synth-person"
VERSION = 2  # 2: 256 test ids (was 64), so a paired test detects a 2-point R1 gap (docs/statistics.md)
DEFAULT_SIZES = {"train_ids": 400, "val_ids": 64, "test_ids": 256, "images_per_id": 4}
HEIGHT, WIDTH = 128, 64
CAPTIONS_PER_IMAGE = 2  # RSTPReid has exactly two

PALETTE: dict[str, RGB] = {
    "red": (200, 30, 35),
    "orange": (240, 130, 20),
    "yellow": (240, 220, 40),
    "green": (40, 150, 50),
    "blue": (35, 70, 200),
    "purple": (120, 50, 160),
    "pink": (245, 140, 190),
    "black": (25, 25, 28),
    "white": (240, 240, 240),
    "grey": (130, 130, 130),
    "brown": (110, 70, 35),
}
HAIR_RGB: dict[str, RGB] = {
    "black": (20, 18, 18),
    "brown": (100, 60, 30),
    "blonde": (225, 195, 110),
    "grey": (160, 160, 160),
}
SKIN: tuple[RGB, ...] = ((241, 194, 160), (224, 172, 130), (198, 134, 96), (141, 85, 54))

# field -> possible values; *_type "none" means the item is absent (its colour is then None)
VALUES: dict[str, tuple[str, ...]] = {
    "hair_length": ("short", "long"),
    "hair_colour": tuple(HAIR_RGB),
    "upper_type": ("t-shirt", "long-sleeved", "coat", "tank-top"),
    "upper_colour": tuple(PALETTE),
    "upper_pattern": ("plain", "striped", "checked"),
    "lower_type": ("trousers", "shorts", "skirt"),
    "lower_colour": tuple(PALETTE),
    "shoes_colour": ("black", "white", "brown", "red", "blue", "grey"),
    "bag_type": ("none", "backpack", "handbag"),
    "bag_colour": ("black", "brown", "red", "blue", "green", "grey", "yellow"),
    "hat_type": ("none", "cap", "sun-hat"),
    "hat_colour": ("black", "white", "red", "blue", "green", "yellow"),
}
# caption groups: the fields one phrase may mention, adjectives first, the *_type field last (the noun)
GROUPS: dict[str, tuple[str, ...]] = {
    "hair": ("hair_length", "hair_colour"),
    "upper": ("upper_pattern", "upper_colour", "upper_type"),
    "lower": ("lower_colour", "lower_type"),
    "shoes": ("shoes_colour",),
    "bag": ("bag_colour", "bag_type"),
    "hat": ("hat_colour", "hat_type"),
}

_COLOUR_WORDS = {"grey": ("grey", "gray"), "blonde": ("blonde", "blond")}


def _colour_words(values: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {v: _COLOUR_WORDS.get(v, (v,)) for v in values}


# field -> value -> words (the vocabulary captions are written from and parsed back with)
ADJECTIVES: dict[str, dict[str, tuple[str, ...]]] = {
    "hair_length": {"short": ("short", "cropped"), "long": ("long", "shoulder-length")},
    "upper_pattern": {"plain": ("plain",), "striped": ("striped", "stripy"), "checked": ("checked", "plaid")},
    **{f: _colour_words(VALUES[f]) for f in VALUES if f.endswith("_colour")},
}
# group -> type value ("" = generic noun that says nothing about the type) -> nouns
NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "hair": {"": ("hair",)},
    "upper": {
        "t-shirt": ("t-shirt", "short-sleeved top"),
        "long-sleeved": ("long-sleeved shirt", "sweater"),
        "coat": ("coat", "jacket"),
        "tank-top": ("tank top", "sleeveless top"),
        "": ("top",),
    },
    "lower": {
        "trousers": ("trousers", "pants"),
        "shorts": ("shorts",),
        "skirt": ("skirt",),
        "": ("bottoms",),
    },
    "shoes": {"": ("shoes", "footwear")},
    "bag": {"backpack": ("backpack", "rucksack"), "handbag": ("handbag", "purse"), "": ("bag",)},
    "hat": {
        "cap": ("cap", "baseball cap"),
        "sun-hat": ("sun hat", "wide-brimmed hat"),
        "": ("hat", "headwear"),
    },
}
ABSENT: dict[str, tuple[str, ...]] = {  # phrases saying that the item is absent (its *_type is "none")
    "bag": ("no bag",),
    "hat": ("no hat", "no headwear"),
}
NO_ARTICLE = frozenset({"hair", "trousers", "pants", "shorts", "bottoms", "shoes", "footwear", "headwear"})
SUBJECTS = ("a person", "a pedestrian", "someone", "this person", "the person", "a walker")
TEMPLATES = (
    "{subj} with {items}.",
    "{subj} who has {items}.",
    "{subj}, seen with {items}.",
    "in the picture: {subj} with {items}.",
)


def sample_identity(rng: np.random.Generator) -> dict[str, Any]:
    """Attributes of one person (a colour is None when its item is absent)."""
    attrs: dict[str, Any] = {field: pick(rng, values) for field, values in VALUES.items()}
    for item in ("bag", "hat"):
        if attrs[f"{item}_type"] == "none":
            attrs[f"{item}_colour"] = None
    attrs["skin"] = int(rng.integers(len(SKIN)))
    return attrs


def _nonempty_subset(rng: np.random.Generator, fields: tuple[str, ...]) -> list[str]:
    while True:
        chosen = [f for f in fields if rng.random() < 0.5]
        if chosen:
            return chosen


def _phrase(rng: np.random.Generator, group: str, attrs: dict[str, Any]) -> str:
    """A noun phrase naming a random non-empty subset of the group's attributes."""
    fields = GROUPS[group]
    type_field = f"{group}_type"
    if attrs.get(type_field) == "none":
        return pick(rng, ABSENT[group])
    chosen = _nonempty_subset(rng, fields)
    words = [pick(rng, ADJECTIVES[f][attrs[f]]) for f in fields if f in chosen and f in ADJECTIVES]
    noun_key = attrs[type_field] if type_field in chosen else ""
    noun = pick(rng, NOUNS[group][noun_key])
    text = " ".join([*words, noun])
    if noun in NO_ARTICLE:
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


def make_caption(rng: np.random.Generator, attrs: dict[str, Any]) -> str:
    """A caption naming 2-4 attribute groups (mostly 2 or 3) in random order, with random wording."""
    groups = sample(rng, tuple(GROUPS), pick(rng, (2, 2, 3, 3, 4)))
    items = join_words([_phrase(rng, g, attrs) for g in groups])
    text = pick(rng, TEMPLATES).format(subj=pick(rng, SUBJECTS), items=items)
    return text[0].upper() + text[1:]


def sample_view(rng: np.random.Generator) -> dict[str, Any]:
    """Per-image nuisance: scale, shift, pose, mirror, background and an optional occluder."""
    height = HEIGHT * uniform(rng, 0.72, 0.9)
    view: dict[str, Any] = {
        "height": round(height, 2),
        "top": round(uniform(rng, 2, HEIGHT - height - 2), 2),
        "cx": round(WIDTH / 2 + uniform(rng, -5, 5), 2),
        "leg_spread": round(uniform(rng, 0.0, 0.05), 3),
        "arm_swing": round(uniform(rng, -0.02, 0.05), 3),
        "flip": bool(rng.random() < 0.5),
        "background": [int(c) for c in rng.integers(60, 200, size=3)],
        "occluder": None,
    }
    if rng.random() < 0.3:
        colour = [int(c) for c in rng.integers(40, 180, size=3)]
        if rng.random() < 0.5:
            y0 = int(rng.integers(96, 112))
            view["occluder"] = {"box": [0, y0, WIDTH, HEIGHT], "rgb": colour}
        else:
            x0 = int(rng.integers(6, WIDTH - 14))
            view["occluder"] = {"box": [x0, 0, x0 + int(rng.integers(5, 9)), HEIGHT], "rgb": colour}
    return view


def _contrast(rgb: RGB) -> RGB:
    """A stripe colour visible on a garment of colour `rgb`."""
    return (25, 25, 25) if sum(rgb) > 420 else (235, 235, 235)


class _Figure:
    """Draws one person in figure coordinates: u across (fractions of the height), v down (0 head, 1 feet)."""

    def __init__(self, img: Image.Image, view: dict[str, Any]) -> None:
        self.draw = ImageDraw.Draw(img)
        self.h = view["height"]
        self.cx, self.top = view["cx"], view["top"]
        self.sign = -1.0 if view["flip"] else 1.0

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + self.sign * u * self.h, self.top + v * self.h)

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        (x0, y0), (x1, y1) = self.p(u0, v0), self.p(u1, v1)
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def width(self, frac: float) -> int:
        return max(1, round(frac * self.h))

    def line(self, a: tuple[float, float], b: tuple[float, float], rgb: RGB, frac: float) -> None:
        self.draw.line([self.p(*a), self.p(*b)], fill=rgb, width=self.width(frac))

    def polygon(self, points: list[tuple[float, float]], rgb: RGB) -> None:
        self.draw.polygon([self.p(u, v) for u, v in points], fill=rgb)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))


def _draw_lower(f: _Figure, a: dict[str, Any], skin: RGB, spread: float) -> None:
    colour = PALETTE[a["lower_colour"]]
    for side in (-1, 1):
        hip, foot = (side * 0.045, 0.5), (side * (0.05 + spread), 0.94)
        f.line(hip, foot, skin, 0.06)
        if a["lower_type"] == "trousers":
            f.line(hip, _lerp(hip, foot, 0.95), colour, 0.065)
        elif a["lower_type"] == "shorts":
            f.line(hip, _lerp(hip, foot, 0.35), colour, 0.07)
        shoe = PALETTE[a["shoes_colour"]]
        f.draw.ellipse(f.box(foot[0] - 0.04, 0.92, foot[0] + 0.045, 0.975), fill=shoe)
    if a["lower_type"] == "skirt":
        f.polygon([(-0.09, 0.48), (0.09, 0.48), (0.15, 0.7), (-0.15, 0.7)], colour)


def _draw_upper(f: _Figure, a: dict[str, Any], skin: RGB, swing: float) -> None:
    colour = PALETTE[a["upper_colour"]]
    bottom = 0.64 if a["upper_type"] == "coat" else 0.52
    half = 0.115 if a["upper_type"] == "coat" else 0.095
    f.polygon([(-0.11, 0.18), (0.11, 0.18), (half, bottom), (-half, bottom)], colour)
    stripe = _contrast(colour)
    if a["upper_pattern"] != "plain":
        for i in range(int((bottom - 0.22) / 0.05) + 1):
            f.line((-0.085, 0.22 + 0.05 * i), (0.085, 0.22 + 0.05 * i), stripe, 0.015)
    if a["upper_pattern"] == "checked":
        for u in (-0.06, -0.02, 0.02, 0.06):
            f.line((u, 0.19), (u, bottom - 0.01), stripe, 0.012)
    if a["upper_type"] == "coat":
        f.line((0.0, 0.19), (0.0, bottom), _contrast(colour), 0.01)
    sleeve = {"t-shirt": 0.3, "long-sleeved": 1.0, "coat": 1.0, "tank-top": 0.0}[a["upper_type"]]
    for side in (-1, 1):
        shoulder, hand = (side * 0.12, 0.2), (side * (0.14 + swing), 0.5)
        f.line(shoulder, hand, skin, 0.045)
        if sleeve:
            f.line(shoulder, _lerp(shoulder, hand, sleeve), colour, 0.05)
        f.draw.ellipse(f.box(hand[0] - 0.025, 0.48, hand[0] + 0.025, 0.53), fill=skin)


def _draw_head(f: _Figure, a: dict[str, Any], skin: RGB) -> None:
    hair = HAIR_RGB[a["hair_colour"]]
    f.line((0.0, 0.14), (0.0, 0.19), skin, 0.04)
    f.draw.ellipse(f.box(-0.06, 0.025, 0.06, 0.155), fill=skin)
    f.draw.chord(f.box(-0.065, 0.02, 0.065, 0.12), 180, 360, fill=hair)
    if a["hat_type"] == "none":
        return
    hat = PALETTE[a["hat_colour"]]
    if a["hat_type"] == "cap":
        f.draw.chord(f.box(-0.07, 0.01, 0.07, 0.13), 180, 360, fill=hat)
        f.draw.rectangle(f.box(0.0, 0.06, 0.12, 0.075), fill=hat)
    else:
        f.draw.rectangle(f.box(-0.12, 0.045, 0.12, 0.065), fill=hat)
        f.draw.rectangle(f.box(-0.065, -0.005, 0.065, 0.05), fill=hat)


def render(attrs: dict[str, Any], view: dict[str, Any], rng: np.random.Generator) -> Image.Image:
    """Draw one image of a person: background, figure back to front, then the occluder."""
    img = noisy_background(rng, WIDTH, HEIGHT, tuple(view["background"]), 8)  # type: ignore[arg-type]
    f = _Figure(img, view)
    skin = SKIN[attrs["skin"]]
    if attrs["hair_length"] == "long":
        f.draw.rectangle(f.box(-0.07, 0.06, 0.07, 0.27), fill=HAIR_RGB[attrs["hair_colour"]])
    if attrs["bag_type"] == "backpack":
        f.draw.rectangle(f.box(0.07, 0.2, 0.16, 0.42), fill=PALETTE[attrs["bag_colour"]])
    _draw_lower(f, attrs, skin, view["leg_spread"])
    _draw_upper(f, attrs, skin, view["arm_swing"])
    _draw_head(f, attrs, skin)
    if attrs["bag_type"] == "backpack":
        f.line((0.1, 0.19), (0.03, 0.45), PALETTE[attrs["bag_colour"]], 0.02)
    elif attrs["bag_type"] == "handbag":
        hand_u = -(0.14 + view["arm_swing"])
        f.draw.rectangle(f.box(hand_u - 0.045, 0.52, hand_u + 0.045, 0.62), fill=PALETTE[attrs["bag_colour"]])
    if view["occluder"] is not None:
        f.draw.rectangle(view["occluder"]["box"], fill=tuple(view["occluder"]["rgb"]))
    return img


def _unique_identities(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    """`n` people whose described attributes (all but skin) differ."""
    seen: set[tuple[Any, ...]] = set()
    people: list[dict[str, Any]] = []
    while len(people) < n:
        attrs = sample_identity(rng)
        key = tuple(attrs[f] for f in VALUES)
        if key not in seen:
            seen.add(key)
            people.append(attrs)
    return people


def write(
    out: Path, seed: int, train_ids: int, val_ids: int, test_ids: int, images_per_id: int
) -> dict[str, dict[str, int]]:
    """Render the dataset into `out`; return the per-split counts."""
    rng = make_rng(seed, NAME)
    splits = ["train"] * train_ids + ["val"] * val_ids + ["test"] * test_ids
    people = _unique_identities(rng, len(splits))
    entries: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    counts = {s: {"ids": 0, "images": 0, "captions": 0} for s in ("train", "val", "test")}
    for pid, (split, attrs) in enumerate(zip(splits, people, strict=True)):
        counts[split]["ids"] += 1
        for k in range(images_per_id):
            img_path = f"{pid:05d}_{k}.jpg"
            view = sample_view(rng)
            save_jpeg(render(attrs, view, rng), out / "imgs" / img_path)
            captions = [make_caption(rng, attrs) for _ in range(CAPTIONS_PER_IMAGE)]
            entries.append({"id": pid, "img_path": img_path, "captions": captions, "split": split})
            record[img_path] = {"id": pid, "attributes": attrs, "view": view}
            counts[split]["images"] += 1
            counts[split]["captions"] += len(captions)
    write_json(entries, out / "data_captions.json")
    write_json(
        {"dataset": NAME, "format_version": VERSION, "counts": counts, "images": record}, out / RECORD_FILE
    )
    return counts
