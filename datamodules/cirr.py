"""CIRR (Liu et al., ICCV'21): composed retrieval on real-life images.

Format from the `cirr_dataset` branch of Cuberick-Orion/CIRR: `cap.rc2.{split}.json` (pairid, reference,
target_hard, target_soft, caption, img_set) and `split.rc2.{split}.json` (name -> "./dev/dev-….png").
Conventions follow ABaldrati/CLIP4Cir's CIRR loader: the gallery is every name of the split file in
file order, the positive is `target_hard`, the caption is used as written. The query's reference is excluded
from its candidates and `img_set.members` (reference included) gives Recall_subset's six images; `test1`
has no targets, so its EvalSpec carries only pair ids and gallery names for the test-server submission
that the evaluator writes. Irregular entries of the real files are read as CLIP4Cir reads them and
reported (`QUIRKS`).

Every path is built from `self.root / self.folder`, so a dataset written in CIRR's exact format under another
folder (synth-cir) subclasses this one overriding only `name`, `folder` and `expected`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from fgbench.data.datasets import ComposedQueryDataset, ImageFiles, TripletDataset, VisualDataset
from fgbench.data.module import EvalSet, LoadedData, RetrievalDataModule
from fgbench.data.query_ids import number_repeats
from fgbench.data.validation import (
    DatasetFormatError,
    QuirkKind,
    find_missing,
    read_json,
    require,
    warn_counts,
)
from fgbench.evaluation.spec import EvalSpec
from fgbench.registry import register_datamodule

log = logging.getLogger("fgbench.data")

LAYOUT = """\
<root>/{folder}/train/<k>/train-*.png          (numbered sub-folders, as in NLVR2)
<root>/{folder}/dev/dev-*.png                  (images of the split called "val")
<root>/{folder}/test1/test1-*.png
<root>/{folder}/cirr/captions/cap.rc2.{{train,val,test1}}.json
<root>/{folder}/cirr/image_splits/split.rc2.{{train,val,test1}}.json
"""
N_MEMBERS = 6
UNLABELLED_SPLIT = "test1"  # the only split allowed to lack target_hard (targets are kept by the server)
PAD = -1  # a repeated img_set member, so Recall_subset ranks each image once
QUIRKS = (
    QuirkKind(
        "empty_caption",
        "a caption that is empty or only white space",
        "CLIP4Cir tokenizes the caption as written",
        "kept as written",
    ),
    QuirkKind(
        "reference_is_target",
        "a training entry whose target_hard is its reference",
        "CLIP4Cir's training loader keeps it (reference and target are the same image)",
        "kept as a training triplet (in val/test1 it would leave the query without a positive: an error)",
    ),
    QuirkKind(
        "train_img_set",
        "a training img_set that is not six names of the split holding reference and target",
        "CLIP4Cir never reads img_set when training",
        "kept unread: training does not use img_set",
    ),
    QuirkKind(
        "repeated_member",
        "a name listed twice in an img_set's members",
        "CLIP4Cir's Recall_subset tests membership, so a repeated name counts once",
        "the repeat is left out of the query's subset, so it counts once",
    ),
    QuirkKind(
        "duplicate_pairid",
        "a pairid used by more than one entry",
        "CLIP4Cir keeps every entry (one query each)",
        "kept: one query each, both under that pairid in the test-server files",
    ),
)


@dataclass
class Triplet:
    """One caption entry: reference + caption -> target_hard (None in test1), with its image set."""

    pairid: int
    reference: str
    caption: str
    target: str | None
    members: list[str] = field(default_factory=list)


@dataclass
class SplitData:
    """A parsed split: image names in split-file order, their files, the caption entries, missing files."""

    names: list[str]
    paths: list[Path]
    triplets: list[Triplet]
    labelled: bool
    missing: list[Path]

    @property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


@register_datamodule("cirr")
class CIRRDataModule(RetrievalDataModule):
    """CIRR triplets for training, (reference, caption) queries against the split's images for evaluation.

    `resolve_by_name=True` finds train images whose numbered sub-folder was lost (URL downloads) by searching
    `train/` for the file name; each use is logged. `test_split=None` skips test1 (its images are not needed).
    """

    published_as: ClassVar[str] = "CIRR"  # its `dataset` spelling in results/published.csv

    tasks: ClassVar[frozenset[str]] = frozenset({"composed"})
    folder: ClassVar[str] = "cirr_dataset"
    layout: ClassVar[str] = LAYOUT.format(folder="cirr_dataset")
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"queries": 28225, "images": 16939},
        "val": {"queries": 4181, "images": 2297, "gallery": 2297, "image_sets": 503, "references": 2165},
        "test1": {"queries": 4148, "images": 2315, "gallery": 2315, "image_sets": 503},
    }
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = QUIRKS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Subclasses that override `folder` get the layout of their own folder in error messages."""
        super().__init_subclass__(**kwargs)
        if "layout" not in cls.__dict__:
            cls.layout = LAYOUT.format(folder=cls.folder)

    def __init__(
        self,
        root: str = "data",
        resolve_by_name: bool = False,
        val_split: str = "val",
        test_split: str | None = "test1",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, val_split=val_split, test_split=test_split, **kwargs)  # type: ignore[arg-type]
        self.resolve_by_name = resolve_by_name

    # -- load -----------------------------------------------------------------------------------------
    def load(self) -> LoadedData:
        self.require_dir()
        eval_splits = [s for s in dict.fromkeys([self.val_split, self.test_split]) if s]
        data = {s: self.read_split(s) for s in ["train", *eval_splits]}
        out = LoadedData(train=None, eval_sets={}, stats={})
        out.train, out.stats["train"] = self.train_set(data["train"])
        out.num_classes = len(data["train"].names)
        out.train_vocab_texts = [t.caption for t in data["train"].triplets]
        for split in eval_splits:
            out.eval_sets[split], out.stats[split] = self.eval_set(split, data[split])
        for split, d in data.items():
            out.missing[split] = [str(p) for p in d.missing]
            out.warnings += warn_counts(self.name, split, out.stats[split], self.expected.get(split, {}))
        return out

    def read_split(self, split: str) -> SplitData:
        """Parse a split's image list and captions, check them, and stat its image files."""
        names, paths = self.read_image_split(split)
        known = set(names)
        self._pairids: set[int] = set()
        file = self.caption_file(split)
        entries = read_json(file, self.name)
        if not isinstance(entries, list):
            raise DatasetFormatError(file, f"top level is {type(entries).__name__}", expected="a JSON list")
        labelled = split != UNLABELLED_SPLIT or any(
            isinstance(e, dict) and "target_hard" in e for e in entries
        )
        triplets = [self.read_entry(split, e, file, i, known, labelled) for i, e in enumerate(entries)]
        missing = find_missing(paths)
        if missing and split == "train" and self.resolve_by_name:
            paths, missing = self.resolve_train_paths(paths, missing)
        self.apply_missing_rule(split, missing, len(paths), self.missing_hint(split))
        return SplitData(names, paths, triplets, labelled, missing)

    def pair_ids(self, split: str, queries: list[Triplet], labelled: bool) -> list[str]:
        """The pair ids: the test-server submission's keys as written (test1), the per-query outcomes' keys
        with a duplicate_pairid numbered (a split with targets, scored locally)."""
        ids = [str(t.pairid) for t in queries]
        return number_repeats(ids, self.caption_file(split)) if labelled else ids

    def caption_file(self, split: str) -> Path:
        return self.annotation(f"captions/cap.rc2.{split}.json")

    def read_entry(
        self, split: str, entry: Any, file: Path, i: int, known: set[str], labelled: bool
    ) -> Triplet:
        """Parse one caption entry, stop on what the protocol cannot use, note the quirks it can."""
        train = split == "train"
        t = parse_entry(entry, file, f"entry {i}", labelled, not train)
        where = f"entry {i} (pairid {t.pairid})"
        if not t.caption.strip():
            self.quirk(split, "empty_caption", file, where, "caption", t.caption)
        if t.pairid in self._pairids:
            self.quirk(split, "duplicate_pairid", file, where, "pairid", t.pairid)
        self._pairids.add(t.pairid)
        for key, value in [("reference", t.reference), ("target_hard", t.target)]:
            if value is not None and value not in known:
                raise DatasetFormatError(
                    file, f"image {value!r} is not in the split file", where=where, field=key
                )
        if t.target is not None and t.target == t.reference:
            if not train:  # the reference is excluded from its candidates: no positive would remain
                raise DatasetFormatError(
                    file, f"target_hard equals the reference {t.reference!r}", where=where
                )
            self.quirk(split, "reference_is_target", file, where, "target_hard", t.target)
        if train:
            if t.members and not self.usable_set(t, known):
                self.quirk(split, "train_img_set", file, where, "img_set.members", t.members)
            t.members = []  # training never reads the image set
            return t
        distinct = list(dict.fromkeys(t.members))
        if len(t.members) != N_MEMBERS:
            raise DatasetFormatError(
                file,
                f"{t.members!r}",
                where=where,
                field="img_set.members",
                expected=f"{N_MEMBERS} image names",
            )
        for key, value in [("reference", t.reference), ("target_hard", t.target)]:
            if value is not None and value not in distinct:
                raise DatasetFormatError(
                    file,
                    f"{key} {value!r} is not among the img_set members {t.members}",
                    where=where,
                    field=key,
                )
        for m in distinct:
            if m not in known:
                raise DatasetFormatError(
                    file, f"image {m!r} is not in the split file", where=where, field="img_set.members"
                )
        if len(distinct) < len(t.members):
            self.quirk(split, "repeated_member", file, where, "img_set.members", t.members)
        return t

    @staticmethod
    def usable_set(t: Triplet, known: set[str]) -> bool:
        """Six distinct names of the split holding the reference and the target."""
        names = set(t.members)
        return (
            len(t.members) == N_MEMBERS == len(names)
            and names <= known
            and t.reference in names
            and (t.target is None or t.target in names)
        )

    def read_image_split(self, split: str) -> tuple[list[str], list[Path]]:
        """`split.rc2.{split}.json`: image name -> path relative to the dataset folder."""
        file = self.annotation(f"image_splits/split.rc2.{split}.json")
        table = read_json(file, self.name)
        if not isinstance(table, dict):
            raise DatasetFormatError(file, f"top level is {type(table).__name__}", expected="a JSON object")
        for name, rel in table.items():
            if not isinstance(rel, str) or not rel.strip():
                raise DatasetFormatError(
                    file, f"value is {rel!r}", where=f"entry {name!r}", expected="a relative image path"
                )
        return list(table), [self.base / rel for rel in table.values()]

    def missing_hint(self, split: str) -> str:
        """Point at the two usual causes: val images outside dev/, train images without sub-folders."""
        if split == "train" and not self.resolve_by_name:
            return (
                "If the train/<k>/ sub-folders were lost, resolve_by_name=True searches train/ by file name."
            )
        folder = self.base / ("dev" if split == "val" else split)
        if not folder.is_dir():
            return f"No folder {folder}/: the images of split {split!r} belong there, as the split file says."
        return ""

    def annotation(self, rel: str) -> Path:
        path = self.require_file(self.base / "cirr" / rel)
        return path

    def resolve_train_paths(self, paths: list[Path], missing: list[Path]) -> tuple[list[Path], list[Path]]:
        """Replace missing train files by a file of the same name found anywhere under `train/`."""
        by_name = {p.name: p for p in (self.base / "train").rglob("*.png")}
        lost = set(missing)
        resolved = [by_name.get(p.name, p) if p in lost else p for p in paths]
        still = [p for p in missing if p.name not in by_name]
        log.info(
            "%s [train]: resolve_by_name found %d of %d missing images by file name under %s",
            self.name,
            len(missing) - len(still),
            len(missing),
            self.base / "train",
        )
        return resolved, still

    # -- datasets -------------------------------------------------------------------------------------
    def train_set(self, d: SplitData) -> tuple[TripletDataset, dict[str, int]]:
        index, absent = d.index, set(d.missing)
        kept = [
            t
            for t in d.triplets
            if d.paths[index[t.reference]] not in absent and d.paths[index[str(t.target)]] not in absent
        ]
        ds = TripletDataset(
            ImageFiles(d.paths),
            [index[t.reference] for t in kept],
            [t.caption for t in kept],
            [index[str(t.target)] for t in kept],
        )
        stats = {
            "images": len(d.names),
            "captions": len(d.triplets),
            "labels": len({t.target for t in kept}),
            "queries": len(kept),
            "gallery": 0,
            "missing": len(d.missing),
        }
        return ds, stats

    def eval_set(self, split: str, d: SplitData) -> tuple[EvalSet, dict[str, int]]:
        """Gallery = the split's images; one query per entry. Under skip_missing, missing images leave the
        gallery and queries whose reference, target or image-set member is missing are dropped."""
        lost = set(d.missing)
        absent = {d.names[i] for i, p in enumerate(d.paths) if p in lost}
        keep = [i for i, n in enumerate(d.names) if n not in absent]
        names = [d.names[i] for i in keep]
        gidx = {n: j for j, n in enumerate(names)}
        queries = [t for t in d.triplets if not ({t.reference, *t.members, t.target} & absent)]
        store = ImageFiles([d.paths[i] for i in keep])
        spec = EvalSpec(
            protocol="cirr",
            query_labels=torch.tensor([gidx[str(t.target)] for t in queries], dtype=torch.long)
            if d.labelled
            else None,
            gallery_labels=torch.arange(len(names)),
            exclude=torch.tensor([gidx[t.reference] for t in queries], dtype=torch.long),
            subsets=torch.tensor([subset_row(t.members, gidx) for t in queries], dtype=torch.long).view(
                len(queries), N_MEMBERS
            ),
            query_ids=self.pair_ids(split, queries, d.labelled),
            gallery_names=names,
            info={"dataset": self.name, "split": split, "n_missing": len(d.missing)},
        )
        es = EvalSet(
            queries=ComposedQueryDataset(
                store, [gidx[t.reference] for t in queries], [t.caption for t in queries]
            ),
            gallery=VisualDataset(store),
            spec=spec,
            query_kind="composed",
        )
        stats = {
            "images": len(d.names),
            "captions": len(d.triplets),
            "labels": len({t.target for t in queries if t.target is not None}),
            "queries": len(queries),
            "gallery": len(names),
            "missing": len(d.missing),
            "image_sets": len({tuple(sorted(t.members)) for t in d.triplets}),
            "references": len({t.reference for t in d.triplets}),
        }
        return es, stats


def parse_entry(entry: Any, file: Path, where: str, labelled: bool, with_set: bool) -> Triplet:
    """Read one caption entry's fields and types (reference, caption, target_hard, img_set.members)."""
    pairid = require(entry, "pairid", int, file=file, where=where)
    where = f"{where} (pairid {pairid})"
    reference = require(entry, "reference", str, file=file, where=where, nonempty=True)
    caption = require(entry, "caption", str, file=file, where=where)
    target = require(entry, "target_hard", str, file=file, where=where, nonempty=True) if labelled else None
    members: list[str] = []
    if with_set or "img_set" in entry:
        img_set = require(entry, "img_set", dict, file=file, where=where)
        members = require(img_set, "members", list, file=file, where=f"{where}, img_set")
        if not all(isinstance(m, str) for m in members):
            raise DatasetFormatError(
                file, f"{members!r}", where=where, field="img_set.members", expected="image names"
            )
    return Triplet(pairid, reference, caption, target, members)


def subset_row(members: list[str], gidx: dict[str, int]) -> list[int]:
    """Gallery indices of an img_set's members; a repeated name is padding (each image ranked once)."""
    seen: set[str] = set()
    row = []
    for m in members:
        row.append(PAD if m in seen else gidx[m])
        seen.add(m)
    return row
