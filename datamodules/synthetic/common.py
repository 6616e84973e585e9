"""Shared pieces of the synthetic generators: seeded randomness, byte-stable writers, atomic output folders.

Every generator draws from one `numpy.random.Generator` seeded by (seed, dataset name), writes images with
fixed encoder options and JSON with sorted keys, so the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")
RGB = tuple[int, int, int]

RECORD_FILE = "render_record.json"  # side file: what each image was rendered from (readers ignore it)


def make_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded by the user's seed and a stable hash of the dataset name."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """One element of `items`, uniformly."""
    return items[int(rng.integers(len(items)))]


def sample(rng: np.random.Generator, items: Sequence[T], k: int) -> list[T]:
    """`k` distinct elements of `items` in random order."""
    return [items[int(i)] for i in rng.permutation(len(items))[:k]]


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def join_words(parts: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def noisy_background(
    rng: np.random.Generator, width: int, height: int, base: RGB, amount: int
) -> Image.Image:
    """A flat colour with per-pixel noise, so backgrounds are not trivially separable from shapes."""
    if amount == 0:
        return Image.new("RGB", (width, height), base)
    noise = rng.integers(-amount, amount + 1, size=(height, width, 1))
    pixels = np.clip(np.asarray(base, dtype=np.int64)[None, None, :] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90, optimize=False, progressive=False)


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=6)


def write_json(obj: Any, path: Path) -> None:
    """Byte-stable JSON: sorted keys, ASCII, one trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, ensure_ascii=True) + "\n", encoding="ascii")


def folder_name(name: str, version: int, seed: int, sizes: dict[str, int], defaults: dict[str, int]) -> str:
    """`synth-person-v1-seed0`, plus a short hash of the sizes when they are not the defaults."""
    base = f"{name}-v{version}-seed{seed}"
    if sizes == defaults:
        return base
    digest = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:8]
    return f"{base}-{digest}"


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `final`; rename it to `final` only if the block succeeds.

    An interrupted or failed generation leaves no `final` folder (a killed process may leave a hidden
    `.name.tmp-*` folder, which nothing reads). If another process finished first, its copy is kept.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
