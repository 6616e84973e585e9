"""Decode every referenced image once before a run, so a corrupt file stops it before training, not after.

`ImageCheck` is what `RetrievalDataModule(verify_images=True)` activates around `load()`: every loader
stats its files through `validation.find_missing`, which hands the files that exist to the active check;
files that cannot be decoded come back as missing ones, so each loader drops them (skip_missing) or
refuses them with the rest, without loader-specific code. Decoding runs in a thread pool (PIL releases
the GIL while it decodes); JPEGs decode at 1/8 scale (libjpeg still reads every coefficient, so truncated
and corrupt streams fail as they would at full size). A verdict is cached per (path, size, mtime) under
`$FGBENCH_CACHE_DIR` (default ~/.cache/fgbench), one file per image folder, for folders of at least
`CACHE_MIN` images: a dataset is decoded once, later runs only stat its files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from fgbench.io import atomic_write_json

log = logging.getLogger("fgbench.data")

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CACHE_MIN = 1000  # smaller sets decode in well under a second: not worth a cache file
CHUNK = 64  # images per pool task
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where verdicts are kept: $FGBENCH_CACHE_DIR, else ~/.cache/fgbench (XDG_CACHE_HOME respected)."""
    env = os.environ.get("FGBENCH_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fgbench"


def decode_error(path: Path | str) -> str | None:
    """None when PIL decodes the image (as `load_image` reads it), else the reason it cannot."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (1, 1))  # JPEG: decode at the smallest DCT scale; other formats: no-op
            img.convert("RGB")
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return None


def _decode_chunk(paths: Sequence[Path]) -> list[str | None]:
    return [decode_error(p) for p in paths]


class VerdictCache:
    """Good (size, mtime_ns) per file under one folder, in one JSON file named by the folder's hash."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
        self.file = cache_dir() / "images" / f"{key}.json"
        self.good: dict[str, list[int]] = {}
        try:
            data = json.loads(self.file.read_text())
            if data.get("version") == CACHE_VERSION and data.get("folder") == str(folder.resolve()):
                self.good = data["files"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.good = {}

    def save(self) -> None:
        try:
            atomic_write_json(
                self.file,
                {"version": CACHE_VERSION, "folder": str(self.folder.resolve()), "files": self.good},
                indent=None,
            )
        except OSError as err:  # a read-only home must not stop a run
            log.warning("could not write the image verdict cache %s (%s)", self.file, err)


class ImageCheck:
    """Decodes the images `find_missing` finds present; remembers the unreadable ones and their splits.

    `progress`: show a progress bar (the `data check` command) instead of one log line.
    """

    def __init__(self, dataset: str, progress: bool = False, workers: int | None = None) -> None:
        self.dataset = dataset
        self.progress = progress
        self.workers = workers or min(32, os.cpu_count() or 1)
        self.verdicts: dict[Path, str | None] = {}  # this run's verdicts (a file shared by splits: once)
        self.by_split: dict[str, dict[str, str]] = {}  # split -> {path: reason}, in the order found

    # -- called by validation.find_missing ------------------------------------------------------------
    def unreadable(self, present: Mapping[Path, os.stat_result]) -> set[Path]:
        """The images among `present` (path -> its stat) that cannot be decoded."""
        images = {p: st for p, st in present.items() if p.suffix.lower() in IMAGE_SUFFIXES}
        todo = [p for p in images if p not in self.verdicts]
        if todo:
            self._verify(todo, images)
        return {p for p in images if self.verdicts[p] is not None}

    # -- called by validation.handle_missing ----------------------------------------------------------
    def claim(self, split: str, missing: Iterable[Path | str]) -> dict[str, str]:
        """Of `missing`, the unreadable files ({path: reason}); recorded under `split`."""
        bad = {}
        for p in missing:
            reason = self.verdicts.get(Path(p))
            if reason is not None:
                bad[str(p)] = reason
        if bad:
            self.by_split.setdefault(split, {}).update(bad)
        return bad

    # -- decoding -------------------------------------------------------------------------------------
    def _verify(self, todo: list[Path], stats: Mapping[Path, os.stat_result]) -> None:
        caches = self._caches(todo)
        pending = []
        for p in todo:
            cache = caches.get(p.parent)
            st = stats[p]
            if cache is not None and cache.good.get(_rel(p, cache.folder)) == [st.st_size, st.st_mtime_ns]:
                self.verdicts[p] = None
            else:
                pending.append(p)
        if pending:
            self._decode(pending)
            for cache in {id(c): c for c in caches.values()}.values():
                for p in pending:
                    if self.verdicts[p] is None and caches.get(p.parent) is cache:
                        cache.good[_rel(p, cache.folder)] = [stats[p].st_size, stats[p].st_mtime_ns]
                cache.save()

    def _caches(self, paths: list[Path]) -> dict[Path, VerdictCache]:
        """One cache per top image folder holding at least CACHE_MIN of `paths` (per parent directory)."""
        parents: dict[Path, int] = {}
        for p in paths:
            parents[p.parent] = parents.get(p.parent, 0) + 1
        if len(paths) < CACHE_MIN:
            return {}
        common = Path(os.path.commonpath([str(d) for d in parents]))
        cache = VerdictCache(common)
        return dict.fromkeys(parents, cache)

    def _decode(self, paths: list[Path]) -> None:
        chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
        if len(chunks) == 1:
            results = iter([_decode_chunk(chunks[0])])
            self._collect(chunks, results, None)
            return
        log.info("%s: decoding %d images once to find unreadable files", self.dataset, len(paths))
        with ThreadPoolExecutor(self.workers) as pool:
            results = pool.map(_decode_chunk, chunks)
            if self.progress:
                from rich.progress import Progress

                with Progress(transient=True) as bar:
                    task = bar.add_task(f"{self.dataset}: decoding images", total=len(paths))
                    self._collect(chunks, results, lambda n: bar.advance(task, n))
            else:
                self._collect(chunks, results, None)

    def _collect(
        self,
        chunks: list[list[Path]],
        results: Iterable[list[str | None]],
        advance: Callable[[int], None] | None,
    ) -> None:
        for chunk, verdicts in zip(chunks, results, strict=True):
            self.verdicts.update(zip(chunk, verdicts, strict=True))
            if advance is not None:
                advance(len(chunk))


def _rel(path: Path, folder: Path) -> str:
    """`path` relative to `folder`, a prefix of it (string slicing: relpath is slow on 100k+ files)."""
    return str(path)[len(str(folder).rstrip(os.sep) + os.sep) :]
