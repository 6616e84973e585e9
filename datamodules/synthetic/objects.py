"""Scenes of coloured shapes, shared by synth-scenes and synth-cir: sampling, drawing and wording.

A scene is a list of `Obj` on a square canvas; no two objects overlap and no two share both colour and
shape, so "the red circle" always names one object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datamodules.synthetic.common import RGB, noisy_background, pick, uniform

CANVAS = 96  # pixels, square
MARGIN = 2  # pixels kept free at the border
GAP = 4  # pixels kept free between two objects' boxes

COLOURS: dict[str, RGB] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 225, 45),
    "green": (45, 170, 60),
    "blue": (45, 90, 225),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond")
RADIUS = {"small": 8, "large": 14}  # half the side of the object's box

# value -> words, the vocabulary captions are written from and parsed back with
COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}


@dataclass(frozen=True)
class Obj:
    """One shape: its attributes and the centre of its box, in pixels."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """x1, y1, x2, y2 in pixels."""
        r = RADIUS[self.size]
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    @property
    def key(self) -> tuple[str, str]:
        """(colour, shape): unique within a scene."""
        return (self.colour, self.shape)

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "box": [round(v, 2) for v in self.box]}


def _clear(a: Obj, b: Obj) -> bool:
    """Whether the boxes of `a` and `b` are at least GAP pixels apart on some axis."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.box, b.box
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def valid(objs: list[Obj]) -> bool:
    """Inside the canvas, no overlaps, (colour, shape) unique."""
    inside = all(MARGIN <= min(o.box) and max(o.box) <= CANVAS - MARGIN for o in objs)
    unique = len({o.key for o in objs}) == len(objs)
    apart = all(_clear(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :])
    return inside and unique and apart


def random_centre(rng: np.random.Generator, size: str) -> tuple[float, float]:
    lo, hi = MARGIN + RADIUS[size], CANVAS - MARGIN - RADIUS[size]
    return round(uniform(rng, lo, hi), 1), round(uniform(rng, lo, hi), 1)


def place(rng: np.random.Generator, objs: list[Obj], new: Obj, tries: int = 200) -> Obj | None:
    """`new` moved to a random free position among `objs`, or None if none was found."""
    for _ in range(tries):
        cx, cy = random_centre(rng, new.size)
        moved = replace(new, cx=cx, cy=cy)
        if valid([*objs, moved]):
            return moved
    return None


def random_object(rng: np.random.Generator, objs: list[Obj]) -> Obj | None:
    """A new object with a fresh (colour, shape) at a free position, or None if it does not fit."""
    taken = {o.key for o in objs}
    for _ in range(50):
        obj = Obj(pick(rng, SHAPES), pick(rng, tuple(COLOURS)), pick(rng, tuple(RADIUS)), 0.0, 0.0)
        if obj.key not in taken:
            return place(rng, objs, obj)
    return None


def random_scene(rng: np.random.Generator, n: int) -> list[Obj]:
    """A valid scene of `n` objects (restarts until all fit)."""
    while True:
        objs: list[Obj] = []
        while len(objs) < n:
            obj = random_object(rng, objs)
            if obj is None:
                break
            objs.append(obj)
        if len(objs) == n:
            return objs


def draw_scene(objs: list[Obj], rng: np.random.Generator, noise: int) -> Image.Image:
    """Render the objects on a random dark background with per-pixel noise of +-`noise`."""
    base = tuple(int(c) for c in rng.integers(30, 90, size=3))
    img = noisy_background(rng, CANVAS, CANVAS, base, noise)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    for o in objs:
        x0, y0, x1, y1 = o.box
        rgb = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=rgb)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=rgb)
        elif o.shape == "triangle":
            draw.polygon([(o.cx, y0), (x1, y1), (x0, y1)], fill=rgb)
        else:
            draw.polygon([(o.cx, y0), (x1, o.cy), (o.cx, y1), (x0, o.cy)], fill=rgb)
    return img


def noun_phrase(rng: np.random.Generator, o: Obj, with_size: bool, definite: bool = False) -> str:
    """'a small red circle', 'an orange box', 'the red disc': size optional; colour and shape always, so
    the phrase names one object of its scene."""
    words = [pick(rng, SIZE_WORDS[o.size])] if with_size else []
    words += [pick(rng, COLOUR_WORDS[o.colour]), pick(rng, SHAPE_WORDS[o.shape])]
    article = "the" if definite else ("an" if words[0][0] in "aeiou" else "a")
    return f"{article} {' '.join(words)}"
