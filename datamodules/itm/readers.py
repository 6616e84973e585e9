"""Parsers of the official Flickr30K / COCO annotation files; errors name file, entry, field.

- Karpathy's `dataset_{flickr30k,coco}.json` (`caption_datasets.zip`).
- SCAN's precomp `{split}_caps.txt` / `{split}_ids.txt` (kuanghueilee/SCAN).
- COCO's `captions_{train,val}2014.json` and TERAN's `coco_{split}_ids.npy` (mesnico/TERAN).
- Flickr30K image sizes: read from the image headers and cached as `sizes.json`; TERAN's `sizes.pkl` is a
  pickle and is only converted when the user opts in.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgbench.data.validation import DatasetError, DatasetFormatError, read_json, require

from .common import load_npy

log = logging.getLogger("fgbench.data")

KARPATHY_SPLITS = ("train", "val", "test", "restval")
SIZES_JSON = "sizes.json"
SIZES_PKL = "sizes.pkl"


# One quirky entry found while parsing: (kind, where, field, value); the DataModule reports it for its split.
EntryQuirk = tuple[str, str, "str | None", Any]


@dataclass
class KarpathyImage:
    """One entry of Karpathy's `images[]`."""

    index: int  # position in images[] (the Flickr30K bottom-up feature id)
    filename: str
    split: str
    captions: list[str]  # `raw`, stripped, every sentence
    filepath: str = ""  # COCO: train2014 | val2014
    cocoid: int = -1  # COCO image id (the COCO bottom-up feature id)
    quirks: list[EntryQuirk] = field(default_factory=list)  # of its captions (whitespace, empty, non-ASCII)


def caption_quirks(text: str, where: str, field_name: str | None) -> list[EntryQuirk]:
    """The quirks of one caption as written: empty, surrounding whitespace, non-ASCII characters."""
    out: list[EntryQuirk] = []
    if not text.strip():
        out.append(("empty_caption", where, field_name, text))
    elif text != text.strip():
        out.append(("raw_whitespace", where, field_name, text))
    if not text.isascii():
        out.append(("non_ascii_caption", where, field_name, text))
    return out


def count_quirk(n_captions: int) -> str | None:
    """The quirk of an image's caption count (five is the norm of both datasets)."""
    if n_captions == 0:
        return "no_captions"
    if n_captions < 5:
        return "fewer_than_5_captions"
    return "more_than_5_captions" if n_captions > 5 else None


def read_karpathy(file: Path, dataset: str, coco: bool) -> list[KarpathyImage]:
    """Parse a Karpathy split JSON; COCO entries must also have `filepath` and `cocoid`."""
    data = read_json(file, dataset)
    images = require(data, "images", list, file=file, where="top level")
    return [parse_karpathy_image(e, file, i, coco) for i, e in enumerate(images)]


def parse_karpathy_image(entry: Any, file: Path, i: int, coco: bool) -> KarpathyImage:
    where = f"images[{i}]"
    filename = require(entry, "filename", str, file=file, where=where, nonempty=True)
    split = require(entry, "split", str, file=file, where=where)  # an unknown one: the caller's quirk
    sentences = require(entry, "sentences", list, file=file, where=where)
    img = KarpathyImage(index=i, filename=filename, split=split, captions=[])
    for j, sentence in enumerate(sentences):
        at = f"{where}.sentences[{j}]"
        raw = require(sentence, "raw", str, file=file, where=at)
        img.captions.append(raw.strip())
        img.quirks += caption_quirks(raw, at, "raw")
    if coco:
        img.filepath = require(entry, "filepath", str, file=file, where=where, nonempty=True)
        img.cocoid = require(entry, "cocoid", int, file=file, where=where)
    return img


def select_captions(captions: Sequence[str], policy: str) -> list[str]:
    """Caption policy: `first5` (the first five, as SCAN/TERAN) or `all` (COCO test: 25,010)."""
    return list(captions[:5]) if policy == "first5" else list(captions)


# -- SCAN precomp -------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    """The lines of a text file as written (split on '\\n' only, as SCAN's binary read: no Unicode separator
    splits a caption), without the newline that ends the last one."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(path, f"not UTF-8 text ({err})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_ids(path: Path) -> list[int] | None:
    """SCAN `{split}_ids.txt`: one integer image id per line; None if any line is not an integer."""
    try:
        return [int(line) for line in read_lines(path)]
    except ValueError:
        return None


def caption_mapping(caps_file: Path, n_captions: int, ims_file: Path, n_images: int) -> list[int]:
    """SCAN's rule: 5N lines -> caption j is image j // 5; N lines -> image j; anything else is an error."""
    if n_captions == 5 * n_images:
        return [j // 5 for j in range(n_captions)]
    if n_captions == n_images:
        return list(range(n_captions))
    raise DatasetFormatError(
        caps_file,
        f"{n_captions} lines for {n_images} images in {ims_file}",
        expected=f"{5 * n_images} (5 per image) or {n_images} (1 per image) lines",
    )


# -- COCO captions + TERAN ids ------------------------------------------------------------------------


@dataclass
class CocoAnnotations:
    """COCO captions JSONs merged: annotation id -> (image id, caption as written); image id -> (w, h)."""

    captions: dict[int, tuple[int, str]]
    sizes: dict[int, tuple[int, int]]


def read_coco_captions(files: Sequence[Path], dataset: str) -> CocoAnnotations:
    out = CocoAnnotations({}, {})
    for file in files:
        data = read_json(file, dataset)
        for k, a in enumerate(require(data, "annotations", list, file=file, where="top level")):
            where = f"annotations[{k}]"
            ann_id = require(a, "id", int, file=file, where=where)
            image_id = require(a, "image_id", int, file=file, where=where)
            caption = require(a, "caption", str, file=file, where=where)
            out.captions[ann_id] = (image_id, caption)  # as written: the caller strips and reports quirks
        for k, im in enumerate(require(data, "images", list, file=file, where="top level")):
            where = f"images[{k}]"
            image_id = require(im, "id", int, file=file, where=where)
            size = tuple(require(im, key, int, file=file, where=where) for key in ("width", "height"))
            out.sizes[image_id] = size  # type: ignore[assignment]
    return out


def read_annotation_ids(path: Path) -> list[int]:
    """TERAN `coco_{split}_ids.npy`: a 1-D integer array of COCO caption-annotation ids."""
    ids = load_npy(path, "a 1-D integer array of caption-annotation ids")
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DatasetFormatError(path, f"{ids.dtype} array of shape {ids.shape}", expected="1-D integers")
    return [int(x) for x in ids]


# -- Flickr30K image sizes ----------------------------------------------------------------------------


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header (PIL does not decode the pixels)."""
    with Image.open(path) as img:
        return img.size


def flickr_sizes(
    images_dir: Path, filenames: Sequence[str], trust_pkl: bool, dataset: str
) -> dict[str, tuple[int, int]]:
    """Image sizes by file name, cached once as `images/sizes.json` (read from the headers of present images).

    `filenames` = every `images[]` entry of the Karpathy JSON, in order. TERAN ships `sizes.pkl` instead; a
    pickle can run code when loaded, so it is converted to the JSON cache only with `trust_pkl=True`.
    Files still without a size are the caller's missing images.
    """
    cache, pkl = images_dir / SIZES_JSON, images_dir / SIZES_PKL
    if not cache.is_file() and not any((images_dir / f).is_file() for f in filenames):
        if not pkl.is_file():
            raise DatasetError(
                f"{dataset}: {images_dir} holds neither the raw images nor a sizes file ({SIZES_JSON}, or "
                f"TERAN's {SIZES_PKL}); put the Flickr30K images there, their sizes normalise the boxes."
            )
        if not trust_pkl:
            raise DatasetError(
                f"{dataset}: found {pkl} but no images and no {SIZES_JSON}. A pickle can run code when "
                f"loaded, so it is not read by default. Put the raw images in {images_dir} (sizes are read "
                f"from their headers), or, if you trust the file, pass trust_sizes_pkl=True to convert it "
                f"once to {cache}."
            )
        write_sizes(cache, sizes_from_pickle(pkl, filenames))
        log.info("%s: converted trusted %s to %s", dataset, pkl, cache)
    sizes = read_sizes_json(cache, dataset) if cache.is_file() else {}
    new = {f: header_size(images_dir / f) for f in filenames if f not in sizes and (images_dir / f).is_file()}
    if new:
        sizes.update(new)
        write_sizes(cache, sizes)
    return sizes


def read_sizes_json(path: Path, dataset: str) -> dict[str, tuple[int, int]]:
    table = read_json(path, dataset)
    if not isinstance(table, dict):
        raise DatasetFormatError(path, f"top level is {type(table).__name__}", expected="{filename: [w, h]}")
    return {name: check_size(v, path, f"entry {name!r}") for name, v in table.items()}


def check_size(value: Any, file: Path, where: str) -> tuple[int, int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value):
        raise DatasetFormatError(
            file, f"{value!r}", where=where, expected="[width, height] positive integers"
        )
    return int(value[0]), int(value[1])


def sizes_from_pickle(path: Path, filenames: Sequence[str]) -> dict[str, tuple[int, int]]:
    """TERAN's `sizes.pkl`: a list of (w, h) aligned with the Karpathy `images[]` (only behind the opt-in)."""
    table = pickle.loads(path.read_bytes())  # the caller checked the user's explicit trust_sizes_pkl=True
    if not isinstance(table, (list, tuple)) or len(table) != len(filenames):
        raise DatasetFormatError(
            path,
            f"{type(table).__name__} of length {len(table) if hasattr(table, '__len__') else '?'}",
            expected=f"a list of {len(filenames)} (width, height) pairs aligned with images[]",
        )
    return {
        f: check_size(v, path, f"entry {i}") for i, (f, v) in enumerate(zip(filenames, table, strict=True))
    }


def write_sizes(path: Path, sizes: dict[str, tuple[int, int]]) -> None:
    """Write the sizes cache atomically; a read-only dataset folder only costs a warning."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({k: list(v) for k, v in sorted(sizes.items())}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not write the image-size cache %s (%s); sizes are re-read next time", path, err)
