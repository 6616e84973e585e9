"""RetrievalDataModule: the base every dataset family extends (docs/architecture.md, step 2).

A subclass implements `load()`: parse the official annotation files, validate them (docs/data/) and return
a `LoadedData` with the training dataset, one `EvalSet` per evaluation split and per-split counts. The base
class serves the loaders: a training loader of task batches, and for validation and test two loaders,
queries then gallery, whose items carry their dataset index. `batch_size` is per device and never scaled
with the world size (in-batch losses depend on it; docs/methods.md). Lightning wraps the loaders in
DistributedSamplers under DDP; the evaluator de-duplicates the padded items by index.

What a method builds itself from is one frozen `DataInfo` (`RetrievalDataModule.info()`: task family,
feature source, boxes, region width, splits, training captions, classes, tiny image size); the loaders serve
copies of the loaded datasets carrying the processor's transform (`with_transform`), never changing them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fgbench.data import batches as B
from fgbench.data.datasets import TextDataset, TransformDataset, VisualDataset, VisualStore
from fgbench.data.images import ImageCheck
from fgbench.data.processor import BasicProcessor, Processor
from fgbench.data.samplers import Resumable, ShuffleSampler
from fgbench.data.validation import (
    EXPECTED_LOG,
    IMAGE_CHECK,
    QuirkKind,
    QuirkLog,
    handle_missing,
    not_found,
)
from fgbench.evaluation.spec import EvalSpec

log = logging.getLogger("fgbench.data")

TRAIN_COLLATE: dict[str, Callable[..., Any]] = {
    "text-image": B.collate_pairs,
    "image-text": B.collate_pairs,
    "composed": B.collate_triplets,
}
QUERY_COLLATE: dict[str, Callable[..., Any]] = {
    "text": B.collate_texts,
    "composed": B.collate_composed_queries,
}

# what the gallery serves: raw images, SCAN's precomputed region features or TERAN's bottom-up ones
FeatureSource = Literal["images", "precomp", "butd"]
TaskFamily = Literal["person", "itm", "composed"]


def family_of(tasks: frozenset[str]) -> TaskFamily:
    """The task family of a set of tasks: composed, itm (Flickr30K, COCO, synth-scenes) or person (text-image
    only: person retrieval, CUB, Flowers)."""
    if "composed" in tasks:
        return "composed"
    return "itm" if "image-text" in tasks else "person"


@dataclass(frozen=True)
class DataInfo:
    """Everything a method's `build` and the CLI know of a DataModule, in one typed, frozen description
    (`RetrievalDataModule.info()`), so no code reads an undeclared DataModule attribute."""

    name: str
    tasks: frozenset[str]
    family: TaskFamily
    feature_source: FeatureSource
    with_boxes: bool  # the images come with their bottom-up boxes (`butd` always has them)
    region_dim: int | None  # feature size of the precomputed regions; None when the data serves images
    val_split: str
    test_split: str
    train_texts: tuple[str, ...]  # the training captions (the tiny profile's word vocabulary)
    num_classes: int  # training identities / classes (MMRef references, ID classifiers)
    tiny_image_size: tuple[int, int]  # (height, width) the tiny profile resizes images to


@dataclass
class EvalSet:
    """One evaluation split: query and gallery datasets plus the EvalSpec that scores them."""

    queries: TransformDataset
    gallery: TransformDataset
    spec: EvalSpec
    query_kind: str = "text"  # "text" | "composed" (selects the query collate function)


@dataclass
class LoadedData:
    """What `load()` returns."""

    train: TransformDataset | None
    eval_sets: dict[str, EvalSet]  # split name -> EvalSet
    stats: dict[str, dict[str, int]]  # split -> {images, captions, labels, queries, gallery, missing}
    # (`missing` counts files referenced but absent, before any skip_missing drop)
    num_classes: int = 0  # training identities / classes (MMRef references, ID classifiers)
    train_vocab_texts: list[str] = field(default_factory=list)  # training captions (tiny tokenizers)
    warnings: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> every missing path
    quirks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # QuirkLog.report()
    # split -> {path: reason} of images that exist but cannot be decoded (verify_images=True)
    unreadable: dict[str, dict[str, str]] = field(default_factory=dict)
    # split (or row, e.g. "val/dress") -> the expected counts its found counts were compared with
    expected: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """result.json's data section: counts, warnings, quirks, missing and unreadable files per split."""
        return {
            "stats": self.stats,
            "warnings": list(self.warnings),
            "quirks": self.quirks,
            "n_missing": {split: len(paths) for split, paths in self.missing.items()},
            "n_unreadable": {split: len(paths) for split, paths in self.unreadable.items()},
        }

    def split_unreadable(self, by_split: dict[str, dict[str, str]]) -> None:
        """Move the unreadable images the loaders counted as missing into `unreadable` (and the stats)."""
        for split, bad in by_split.items():
            self.unreadable[split] = dict(bad)
            if split in self.missing:
                self.missing[split] = [p for p in self.missing[split] if p not in bad]
            counts = self.stats.get(split)
            if counts is not None:
                if "missing" in counts:
                    counts["missing"] = max(0, int(counts["missing"]) - len(bad))
                counts["unreadable"] = len(bad)


def caption_eval_set(
    protocol: str,
    store: VisualStore,
    captions: Sequence[Sequence[str]],
    labels: Sequence[int],
    names: Sequence[str],
    info: dict[str, Any],
    label_names: dict[int, str] | None = None,
) -> EvalSet:
    """Text-to-image evaluation over images that each hold captions: gallery = the store's images (image n
    labelled `labels[n]`, named `names[n]`), queries = every caption in order, labelled as its image, with
    the stable id "<image name>#<j>" (person retrieval, Reed et al.'s classes)."""
    spec = EvalSpec(
        protocol=protocol,
        query_labels=torch.tensor(
            [lab for lab, caps in zip(labels, captions, strict=True) for _ in caps], dtype=torch.long
        ),
        gallery_labels=torch.tensor(list(labels), dtype=torch.long),
        query_ids=[f"{im}#{j}" for im, caps in zip(names, captions, strict=True) for j in range(len(caps))],
        gallery_names=list(names),
        label_names=label_names,
        info=info,
    )
    return EvalSet(
        queries=TextDataset([c for caps in captions for c in caps]), gallery=VisualDataset(store), spec=spec
    )


class StatefulLoader(DataLoader):
    """A training loader whose position Lightning keeps in checkpoints, so a run killed mid-epoch resumes
    exactly where it stopped: the sampler's order depends only on (seed, epoch) and skips what was done."""

    def __init__(self, *args: Any, progress: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, int]:
        return {"batches": int(self._progress()) if self._progress is not None else 0}

    def load_state_dict(self, state: dict[str, int]) -> None:
        done = int(state.get("batches", 0))
        if 0 < done < len(self) and isinstance(self.sampler, Resumable):
            self.sampler.start = done * int(self.batch_size or 1)


class RetrievalDataModule(L.LightningDataModule):
    """Base DataModule: loaders and EvalSpecs from the `LoadedData` a subclass's `load()` builds."""

    name: ClassVar[str] = ""
    tasks: ClassVar[frozenset[str]] = frozenset()
    published_as: ClassVar[str] = ""  # its `dataset` spelling in results/published.csv; "" never compared
    layout: ClassVar[str] = ""  # the expected tree under `root` (docs/data/), shown in errors
    folder: ClassVar[str] = ""  # the dataset's folder under `root` (synthetic subclasses override it)
    # documented counts per split (docs/data/): {"images", "captions", "labels", "queries", "gallery"} -> int,
    # or None where unknown. A mismatch is a warning (plain and ≈ counts alike); found counts go into
    # result.json.
    expected: ClassVar[dict[str, dict[str, int | None]]] = {}
    # (height, width) the tiny profile resizes images to (docs/methods.md, "Tiny profile")
    tiny_image_size: ClassVar[tuple[int, int]] = (32, 32)
    # the irregular entries the authors' files contain, read as the official loader reads them
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = ()
    # for a family whose default configuration has no val split: why, and what to run instead ("{name}" is
    # replaced); `val_dataloader` raises it rather than the bare "no evaluation split"
    no_val_split: ClassVar[str] = ""

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        skip_missing: bool = False,
        val_split: str = "val",
        test_split: str = "test",
        pin_memory: bool = False,
        persistent_workers: bool = False,
        strict: bool = False,
        verify_images: bool = True,
    ) -> None:
        """`strict=True` turns every quirk of the real files into an error (for curated data).

        `verify_images=True` decodes every referenced image once in setup (cached per file; see
        `fgbench.data.images`): an unreadable one stops the run before training, or is dropped and counted
        (n_unreadable) under `skip_missing=True`.
        """
        super().__init__()
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.skip_missing = skip_missing
        self.val_split = val_split
        self.test_split = test_split
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.strict = strict
        self.verify_images = verify_images
        # what the data serves; a family with precomputed features (`itm`) sets both from its arguments
        self.feature_source: FeatureSource = "images"
        self.with_boxes: bool = False
        self.image_progress = False  # a progress bar while decoding (the `data check` command sets it)
        self.quirks = QuirkLog(self.name, self.quirk_kinds, strict)
        self.processor: Processor = BasicProcessor()
        self.data: LoadedData | None = None

    # -- to implement -------------------------------------------------------------------------------
    def load(self) -> LoadedData:
        """Parse and validate the dataset on disk (called once, in `setup`)."""
        raise NotImplementedError

    # -- shared machinery ---------------------------------------------------------------------------
    def set_processor(self, processor: Processor) -> None:
        """Attach a method's processor (tokenizer, image size, mean/std, augmentation) before fitting."""
        self.processor = processor

    @property
    def base(self) -> Path:
        """The dataset's folder under `root`: every path of the dataset is built from it."""
        return self.root / self.folder

    def require_dir(self, path: Path | None = None) -> Path:
        """`path` (default: the dataset folder) if it is a folder, else the error showing the layout."""
        path = self.base if path is None else path
        if not path.is_dir():
            raise not_found(self.name, path, self.layout)
        return path

    def require_file(self, path: Path, hint: str | None = None) -> Path:
        """`path` if it is a file, else the error showing the expected layout (and `hint`)."""
        if not path.is_file():
            raise not_found(self.name, path, self.layout, hint)
        return path

    def apply_missing_rule(self, split: str, missing: Sequence[Path], total: int, hint: str = "") -> None:
        """The missing-file rule for `missing` of `total` referenced files: raise, or under `skip_missing`
        warn with the counts (unreadable images named as such; `fgbench.data.validation.handle_missing`)."""
        handle_missing(self.name, split, missing, total, self.skip_missing, hint)

    def quirk(
        self, split: str, kind: str, file: Path | str, where: str, field: str | None, value: Any
    ) -> None:
        """Record one quirky entry of the real files (an error under `strict=True`)."""
        self.quirks.note(split, kind, file, where, field, value)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.quirks = QuirkLog(self.name, self.quirk_kinds, self.strict)
            check = ImageCheck(self.name, progress=self.image_progress) if self.verify_images else None
            expected: dict[str, dict[str, int | None]] = {}
            token, token_exp = IMAGE_CHECK.set(check), EXPECTED_LOG.set(expected)
            try:
                data = self.load()
            finally:
                IMAGE_CHECK.reset(token)
                EXPECTED_LOG.reset(token_exp)
            data.expected = {**expected, **data.expected}
            if check is not None:
                data.split_unreadable(check.by_split)
            data.quirks = self.quirks.report()
            for line in self.quirks.summary_lines():
                log.warning(line)
            self.data = data

    @property
    def loaded(self) -> LoadedData:
        if self.data is None:
            self.setup()
        assert self.data is not None
        return self.data

    @property
    def num_classes(self) -> int:
        return self.loaded.num_classes

    def train_texts(self) -> list[str]:
        """The training captions (builds the tiny profile's word vocabulary)."""
        return self.loaded.train_vocab_texts

    def info(self) -> DataInfo:
        """The description a method builds itself from (loads the data if it is not loaded yet)."""
        return DataInfo(
            name=self.name,
            tasks=frozenset(self.tasks),
            family=family_of(self.tasks),
            feature_source=self.feature_source,
            with_boxes=self.with_boxes,
            region_dim=region_dim(self),
            val_split=self.val_split,
            test_split=self.test_split,
            train_texts=tuple(self.train_texts()),
            num_classes=self.num_classes,
            tiny_image_size=tuple(self.tiny_image_size),  # type: ignore[arg-type]
        )

    def train_dataset(self, augment: bool = True) -> TransformDataset:
        """The training dataset with the processor's image transform (`augment=False`: the test transform,
        e.g. for a pass over the training pairs in eval mode); a configured copy, the loaded one untouched."""
        ds = self.loaded.train
        if ds is None:
            raise RuntimeError(f"{self.name}: this configuration has no training split")
        return ds.with_transform(self.processor.image_transform(augment))

    def check(self) -> dict[str, dict[str, int]]:
        """Per-split counts for `fgbench data check`."""
        return self.loaded.stats

    def evaluation_set(self, split: str) -> EvalSet:
        """The query and gallery datasets and the EvalSpec of an evaluation split."""
        return self._eval_set(split)

    def _eval_set(self, split: str) -> EvalSet:
        sets = self.loaded.eval_sets
        if split not in sets:
            raise KeyError(f"{self.name}: no evaluation split {split!r}; available: {sorted(sets)}")
        return sets[split]

    def _loader(
        self,
        ds: Dataset,
        collate: Callable[..., Any],
        batch_size: int,
        shuffle: bool,
        sampler: Sampler | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate, processor=self.processor),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(0),  # evaluation never draws from the training RNG
        )

    def train_sampler(self, ds: Dataset, num_replicas: int, rank: int, seed: int) -> Sampler | None:
        """Override to use an identity-aware sampler (a `Resumable` DistributedSampler); None = shuffle."""
        return None

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        ds = self.train_dataset(augment=True)
        task = "composed" if "composed" in self.tasks else "text-image"
        n_rep, rank = self._world()
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        sampler = self.train_sampler(ds, n_rep, rank, seed) or ShuffleSampler(
            ds,
            num_replicas=n_rep,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,  # type: ignore[arg-type]
        )
        return StatefulLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=functools.partial(TRAIN_COLLATE[task], processor=self.processor),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),  # loader seeds draw from it, not the global RNG
            progress=self._batches_done,
        )

    def _batches_done(self) -> int:
        """Training batches the fit loop has processed in the current epoch (not merely prefetched)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def eval_dataloaders(self, split: str) -> list[DataLoader]:
        """[queries, gallery] loaders of an evaluation split."""
        es = self._eval_set(split)
        transform = self.processor.image_transform(False)
        queries, gallery = es.queries.with_transform(transform), es.gallery.with_transform(transform)
        return [
            self._loader(queries, QUERY_COLLATE[es.query_kind], self.eval_batch_size, False),
            self._loader(gallery, B.collate_visuals, self.eval_batch_size, False),
        ]

    def val_dataloader(self) -> list[DataLoader]:
        if self.no_val_split and self.val_split not in self.loaded.eval_sets:
            raise RuntimeError(self.no_val_split.format(name=self.name))
        return self.eval_dataloaders(self.val_split)

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders(self.test_split)


def region_dim(dm: RetrievalDataModule) -> int | None:
    """Feature size of the data's precomputed regions; None when it serves images."""
    if dm.feature_source == "images":
        return None
    ds = dm.loaded.train if dm.loaded.train is not None else dm.evaluation_set(dm.test_split).gallery
    return int(ds[0]["regions"].shape[-1])
