"""Data throughput: images per second the suite's training loader delivers with each method's paper
transforms, per number of loader workers, on JPEG files of the real sizes (issue 11).

The benchmark writes a dataset in RSTPReid's on-disk format (`data_captions.json` + `imgs/`,
docs/data/person.md) into a temp folder, with JPEGs of the size each task's images have (person crops 128x384
(w x h); COCO-like and product photos 640x480), and times `RSTPReidDataModule.train_dataloader()`: JPEG
decode, the method's training transform (`MethodProcessor` presets), normalisation, tokenisation of the
captions in the collate function, and batching, exactly as in training. Every preset is built from its
method's own paper profile, so it follows the method:

- ``person_irra`` (clip_ft, irra, mmref on person data): 384x128, IRRA's augmentation (flip, pad + crop,
  random erasing), CLIP mean/std, CLIP's tokenizer at L = 77;
- ``itm_clip`` (clip_ft on Flickr30K/COCO): resize to 224x224, CLIP's tokenizer;
- ``vsepp`` (VSE++): RandomResizedCrop 224 + flip, ImageNet mean/std, a word vocabulary;
- ``nsfse`` (NSFSE, ARTEMIS' recipe): pad to square, resize 256, random crop 224 + flip, a word vocabulary;
  a composed sample holds two images, so it needs twice the images per sample.

The CLIP tokenizer is a byte-level one of CLIP's vocabulary size written to the temp folder (no pretrained
files are needed; it tokenises per character, not per BPE merge). Times are steady state: the first batch
of every worker (process start-up) is left out and reported as start-up time.

    .venv/bin/python benchmarks/data_throughput.py                      # real sizes, workers 0,1,2,4,8
    .venv/bin/python benchmarks/data_throughput.py --quick              # tiny images, seconds
    .venv/bin/python benchmarks/data_throughput.py --workers 0,4,8,16 --only person_irra
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _bench import (
    BenchParser,
    Outcome,
    cpu_model,
    finish,
    fmt,
    loadavg,
    log,
    render,
    versions,
)
from _fakes import Registry, caption, captions, save_clip_tokenizer
from PIL import Image

SCRIPT = "data_throughput"  # its CSV: results/data_throughput.csv

# -- synthetic dataset on disk -------------------------------------------------------------------------


def write_jpeg(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A (width, height) JPEG with photo-like content: smooth random colour fields plus fine noise, so that
    it compresses (and decodes) like a photograph rather than like a flat colour or white noise."""
    w, h = size
    low = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format="JPEG", quality=90)


def write_rstpreid(root: Path, n_images: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`<root>/RSTPReid/data_captions.json` + `imgs/*.jpg`: 5 images per id, 2 captions per image; the last
    two ids are the val and test splits. Returns the dataset root (the DataModule's `root`)."""
    base = root / "RSTPReid"
    (base / "imgs").mkdir(parents=True, exist_ok=True)
    rng, crng = np.random.default_rng(seed), random.Random(seed)
    n_ids = max(3, n_images // 5)
    records = []
    for i in range(n_ids * 5):
        pid = i // 5
        split = "test" if pid == n_ids - 1 else "val" if pid == n_ids - 2 else "train"
        name = f"{pid:05d}_{i % 5}.jpg"
        write_jpeg(base / "imgs" / name, size, rng)
        records.append(
            {"id": pid, "img_path": name, "captions": [caption(crng), caption(crng)], "split": split}
        )
    (base / "data_captions.json").write_text(json.dumps(records), encoding="utf-8")
    return root


# -- presets -------------------------------------------------------------------------------------------


@dataclass
class Preset:
    """One method's training pipeline: the image size on disk and its processor."""

    methods: str  # the methods that use it
    disk_size: tuple[int, int]  # (width, height) of the JPEG files, real size
    quick_disk_size: tuple[int, int]
    processor: Callable[[bool, Path], Any]  # (quick, temp folder) -> MethodProcessor
    images_per_sample: int = 1
    note: str = ""


PRESETS: Registry[Preset] = Registry("preset")


def register_preset(name: str, preset: Preset) -> None:
    PRESETS[name] = preset


def _word_tokenizer(max_len: int) -> Any:
    from fgbench.encoders import WordTokenizer

    return WordTokenizer.build(captions(200, seed=1), max_words=1000, max_len=max_len)


def _clip_tokenizer(quick: bool, tmp: Path, max_len: int) -> Any:
    """CLIP's tokenizer at paper size; a word vocabulary in --quick (transformers takes seconds to import)."""
    if quick:
        return _word_tokenizer(16)
    from fgbench.encoders import HFTokenizer

    folder = tmp / "clip_tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        save_clip_tokenizer(folder)
    return HFTokenizer(folder, max_length=max_len)


def _quick_size(size: tuple[int, int], quick: bool) -> tuple[int, int]:
    return (max(16, size[0] // 4), max(16, size[1] // 4)) if quick else size


def _paper(module: str, clip: bool, family: str = "") -> Callable[[bool, Path], Any]:
    """The processor of `methods.<module>`'s paper profile (clip_ft: with the fields of task `family`) at its
    image size (quick: a quarter), with CLIP's tokenizer (`clip`) or a word vocabulary."""

    def build(quick: bool, tmp: Path) -> Any:
        import importlib

        from fgbench.profiles import apply_overrides

        mod = importlib.import_module(f"methods.{module}")
        cfg = mod.PROFILES["paper"]
        if family:
            cfg = apply_overrides(cfg, mod.PAPER_BY_FAMILY[family])
        assert cfg.image.size is not None
        size = _quick_size(cfg.image.size, quick)
        tokenizer = _clip_tokenizer(quick, tmp, cfg.max_len) if clip else _word_tokenizer(cfg.max_len)
        return replace(cfg.image, size=size).processor(tokenizer, size)

    return build


register_preset(
    "person_irra", Preset("clip_ft, irra, mmref (person)", (128, 384), (32, 96), _paper("irra", True))
)
register_preset(
    "itm_clip", Preset("clip_ft (Flickr30K/COCO)", (640, 480), (160, 120), _paper("clip_ft", True, "itm"))
)
register_preset("vsepp", Preset("vsepp", (640, 480), (160, 120), _paper("vsepp", False)))
register_preset(
    "nsfse",
    Preset("nsfse", (640, 480), (160, 120), _paper("nsfse", False), 2, "a composed sample needs 2 images"),
)


# -- measurement ---------------------------------------------------------------------------------------


@dataclass
class Row(Outcome):
    preset: str
    workers: int
    methods: str = ""
    disk: str = ""
    output: str = ""
    images_per_s: float | None = None
    startup_s: float | None = None
    batch_ms: float | None = None


def measure(
    root: Path, processor: Any, workers: int, batch: int, batches: int, pin: bool
) -> tuple[float, float, float]:
    """(images/s, seconds to the first steady batch, ms per batch) of the training loader."""
    from datamodules.person import RSTPReidDataModule

    dm = RSTPReidDataModule(root=str(root), batch_size=batch, num_workers=workers, pin_memory=pin)
    dm.setup("fit")
    dm.set_processor(processor)
    loader = dm.train_dataloader()
    need = batches + max(1, workers)
    if len(loader) < need:
        raise RuntimeError(f"{len(loader)} batches in the dataset, {need} needed: write more images")
    t_start = time.perf_counter()
    it = iter(loader)
    for _ in range(max(1, workers)):  # each worker's first batch includes its start-up
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        assert b.visual.pixels is not None and b.visual.pixels.shape[0] == batch
    secs = time.perf_counter() - t0
    del it
    return batch * batches / secs, t0 - t_start, 1e3 * secs / batches


def main(argv: list[str] | None = None) -> int:
    quick = "tiny images, few batches (the fast test)"
    p = BenchParser(__doc__, SCRIPT, quick, list(PRESETS), device=False)
    p.add_argument(
        "--workers", default=None, help="comma-separated worker counts (default 0,1,2,4,8,16 up to the cores)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (quick: 8)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per run (default 20; quick: 3)")
    p.add_argument("--pin-memory", action="store_true", help="pin batches (as for a GPU)")
    args = p.parse_args(argv)
    names = PRESETS.select(args.only, p)
    default = (
        "0,1" if args.quick else ",".join(str(w) for w in (0, 1, 2, 4, 8, 16) if w <= (os.cpu_count() or 1))
    )
    workers = [int(w) for w in (args.workers or default).split(",")]
    batch = args.batch_size or (8 if args.quick else 64)
    batches = args.batches or (3 if args.quick else 20)
    logging.getLogger("fgbench.data").setLevel(logging.ERROR)
    torch.manual_seed(0)
    print(f"host: {cpu_model()}, {os.cpu_count()} cores; {versions()}; load average at start {loadavg()}")
    print(f"batch {batch}, timed batches {batches}, workers {workers}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fgbench-data-bench-") as tmp:
        tmp_path = Path(tmp)
        datasets: dict[tuple[int, int], Path] = {}
        n_images = (batches + max(workers) + 1) * batch // 2 + 10  # 2 captions (pairs) per image
        for name in names:
            preset = PRESETS[name]
            size = preset.quick_disk_size if args.quick else preset.disk_size
            if size not in datasets:
                t0 = time.perf_counter()
                datasets[size] = write_rstpreid(tmp_path / f"data_{size[0]}x{size[1]}", n_images, size)
                log(f"wrote {n_images} JPEGs of {size[0]}x{size[1]} in {time.perf_counter() - t0:.1f} s")
            try:
                proc = preset.processor(args.quick, tmp_path)
            except Exception as err:
                rows.append(Row(name, -1))
                rows[-1].mark("skipped", err, 160)
                continue
            for w in workers:
                row = Row(
                    name, w, preset.methods, f"{size[0]}x{size[1]}", "x".join(map(str, proc.image_size))
                )
                row.note = preset.note
                try:
                    row.images_per_s, row.startup_s, row.batch_ms = measure(
                        datasets[size], proc, w, batch, batches, args.pin_memory
                    )
                except Exception as err:
                    row.mark("failed", err)
                log(f"[{name}] workers {w}: {row.status} {fmt(row.images_per_s, '.1f')} images/s {row.note}")
                rows.append(row)
    disp = [
        {
            "preset": r.preset,
            "methods": r.methods or "-",
            "JPEG on disk (w x h)": r.disk or "-",
            "transform output (h x w)": r.output or "-",
            "workers": str(r.workers) if r.workers >= 0 else "-",
            "images/s": fmt(r.images_per_s, ".1f"),
            "images/s per worker": fmt(
                r.images_per_s / max(1, r.workers) if r.images_per_s is not None else None, ".1f"
            ),
            "ms/batch": fmt(r.batch_ms, ".1f"),
            "start-up s": fmt(r.startup_s, ".2f"),
            "note": r.note if r.status == "ok" else f"{r.status}: {r.note}",
        }
        for r in rows
    ]
    print()
    print(render(disp, {"workers", "images/s", "images/s per worker", "ms/batch", "start-up s"}))
    print()
    for name in names:
        best = [r for r in rows if r.preset == name and r.status == "ok" and r.workers > 0]
        if best:
            per = max(r.images_per_s / r.workers for r in best if r.images_per_s)  # type: ignore[operator]
            k = PRESETS[name].images_per_sample
            print(
                f"{name}: ~{per:.0f} images/s per worker here; a GPU step consuming S samples/s needs about "
                f"ceil({k} x S / {per:.0f}) workers (e.g. {math.ceil(k * 500 / per)} for 500 samples/s)"
            )
    csv_rows = [
        {
            **{k.replace(" ", "_"): v for k, v in d.items()},
            "status": r.status,
            "batch": batch,
            "quick": args.quick,
            "host": f"{cpu_model()}, {os.cpu_count()} cores",
        }
        for r, d in zip(rows, disp, strict=True)
    ]
    return finish(args.out, csv_rows, [f"{r.preset}/{r.workers}" for r in rows if r.status == "failed"])


if __name__ == "__main__":
    sys.exit(main())
