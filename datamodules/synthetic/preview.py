"""Preview sheets: a PNG grid of samples with their captions, read back from the official-format files.

It shows a person what each synthetic benchmark is: synth-person images with their two captions,
synth-scenes hard-negative twins with their five captions, synth-cir reference -> text -> target with the
six-image set (target outlined).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from datamodules.synthetic import generate
from datamodules.synthetic.common import RECORD_FILE

LINE = 12  # pixels per text line with PIL's default font
CHAR = 6  # approximate pixels per character
PAD = 6
INK = (20, 20, 20)
PAPER = (255, 255, 255)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], paragraphs: list[str], width: int) -> None:
    """Word-wrapped paragraphs from `xy` down, within `width` pixels."""
    font = ImageFont.load_default()
    x, y = xy
    for para in paragraphs:
        for line in textwrap.wrap(para, max(8, width // CHAR)):
            draw.text((x, y), line, fill=INK, font=font)
            y += LINE
        y += LINE // 2


def _scaled(img: Image.Image, scale: int) -> Image.Image:
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def _person_sheet(folder: Path) -> Image.Image:
    """Four test identities, two images each, each with its two captions."""
    entries = json.loads((folder / "data_captions.json").read_text())
    test = [e for e in entries if e["split"] == "test"]
    ids = sorted({e["id"] for e in test})[:4]
    cells = [e for pid in ids for e in [x for x in test if x["id"] == pid][:2]]
    img_w, img_h, text_w = 128, 256, 230
    sheet = Image.new("RGB", (2 * (img_w + text_w + PAD), 4 * (img_h + PAD)), PAPER)
    draw = ImageDraw.Draw(sheet)
    for i, e in enumerate(cells):
        x, y = (i % 2) * (img_w + text_w + PAD), (i // 2) * (img_h + PAD)
        with Image.open(folder / "imgs" / e["img_path"]) as img:
            sheet.paste(_scaled(img.convert("RGB"), 2), (x, y))
        _text(draw, (x + img_w + PAD, y + PAD), [f"id {e['id']}", *e["captions"]], text_w - PAD)
    return sheet


def _scenes_sheet(folder: Path) -> Image.Image:
    """Three hard-negative twin pairs of the test split (else its first images), with their five captions."""
    images = json.loads((folder / "dataset_flickr30k.json").read_text())["images"]
    record = json.loads((folder / RECORD_FILE).read_text())["images"]
    test = [i for i, img in enumerate(images) if img["split"] == "test"]
    twins = [i for i in test if record[i]["twin_of"] is not None][:3]
    rows = [row for i in twins for row in ((i - 1, None), (i, record[i]["twin_kind"]))]
    rows = rows or [(i, None) for i in test[:6]]
    size, text_w = 192, 420
    sheet = Image.new("RGB", (size + text_w + PAD, len(rows) * (size + PAD)), PAPER)
    draw = ImageDraw.Draw(sheet)
    for r, (imgid, kind) in enumerate(rows):
        y = r * (size + PAD)
        with Image.open(folder / "flickr30k-images" / images[imgid]["filename"]) as img:
            sheet.paste(_scaled(img.convert("RGB"), 2), (0, y))
        head = f"image {imgid}" + (f" (twin of {imgid - 1}: {kind} changed)" if kind else "")
        raws = [s["raw"] for s in images[imgid]["sentences"]]
        _text(draw, (size + PAD, y + PAD), [head, *raws], text_w - PAD)
    return sheet


def _cir_sheet(folder: Path) -> Image.Image:
    """Five val queries: reference, modification text, target, and the six-image set (target outlined)."""
    queries = json.loads((folder / "cirr" / "captions" / "cap.rc2.val.json").read_text())[:5]
    paths = json.loads((folder / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    size, text_w, thumb = 96, 170, 64
    row_w = 2 * size + text_w + 2 * PAD + 6 * (thumb + 2)
    sheet = Image.new("RGB", (row_w, LINE + len(queries) * (size + PAD)), PAPER)
    draw = ImageDraw.Draw(sheet)
    draw.text((0, 0), "reference | modification | target | image set (target outlined)", fill=INK)

    def load(name: str) -> Image.Image:
        with Image.open(folder / paths[name]) as img:
            return img.convert("RGB")

    for r, q in enumerate(queries):
        y = LINE + r * (size + PAD)
        sheet.paste(load(q["reference"]), (0, y))
        _text(draw, (size + PAD, y + size // 3), [q["caption"]], text_w - PAD)
        sheet.paste(load(q["target_hard"]), (size + text_w, y))
        for k, name in enumerate(q["img_set"]["members"]):
            x = 2 * size + text_w + 2 * PAD + k * (thumb + 2)
            sheet.paste(load(name).resize((thumb, thumb)), (x, y + (size - thumb) // 2))
            if name == q["target_hard"]:
                top = y + (size - thumb) // 2
                draw.rectangle([x - 1, top - 1, x + thumb, top + thumb], outline=(255, 200, 0), width=2)
    return sheet


SHEETS: dict[str, Callable[[Path], Image.Image]] = {
    "synth-person": _person_sheet,
    "synth-scenes": _scenes_sheet,
    "synth-cir": _cir_sheet,
}


def preview(name: str, out: Path, root: Path, seed: int = 0, **sizes: int) -> Path:
    """Generate `name` (if needed) under `root` and write its preview sheet to `out` as a PNG."""
    sheet = SHEETS[name](generate(name, root, seed, **sizes))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.quantize(256).save(out, format="PNG", optimize=True)
    return out
