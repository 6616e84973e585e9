"""FashionIQ (Wu et al., CVPR'21): composed retrieval of dresses, shirts and tops.

Annotations from XiaoxiaoGuo/fashion-iq: `cap.{cat}.{split}.json` (candidate, target, two captions; test
entries have no target) and `split.{cat}.{split}.json` (the category's gallery); images `<ASIN>.jpg`.

Two evaluation protocols, chosen by `protocol`:
- `fiq_a` (ABaldrati/CLIP4Cir): one query per triplet, text = cap(strip(c1)) + " and " + strip(c2), the
  candidate stays in the gallery;
- `fiq_b` (naver/artemis): two queries per triplet, strip(c1) + " and " + strip(c2) and the reverse, the
  candidate is excluded.
strip removes leading and trailing ".", "?", ",", " "; cap is `str.capitalize`. Each category is scored
against its own gallery only (`EvalSpec.groups`). Training texts follow CLIP4Cir: drawn per sample from
"c1 and c2", "c2 and c1", "c1", "c2" (`train_text="random"`), or always "c1 and c2" (`train_text="concat"`),
formatted as the protocol's queries. The test split has no targets: its EvalSpec has `query_labels=None`
(not evaluated). Irregular entries of the real files are read as CLIP4Cir reads them and reported (`QUIRKS`);
`stats` has one row per "<split>/<category>" beside the split totals.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

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

CATEGORIES = ("dress", "shirt", "toptee")
PROTOCOLS = ("fiq_a", "fiq_b")
TRAIN_TEXTS = ("random", "concat")
IMAGE_EXT = ".jpg"
LAYOUT = """\
<root>/fashionIQ_dataset/captions/cap.{dress,shirt,toptee}.{train,val,test}.json
<root>/fashionIQ_dataset/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json
<root>/fashionIQ_dataset/images/<ASIN>.jpg
"""
# (triplets, images) per category and split, from the FashionIQ paper's dataset statistics
COUNTS = {
    "dress": {"train": (5985, 11452), "val": (2017, 3817), "test": (2024, 3818)},
    "shirt": {"train": (5988, 19036), "val": (2038, 6346), "test": (2038, 6346)},
    "toptee": {"train": (6027, 16121), "val": (1961, 5373), "test": (2056, 5374)},
}


def expected_counts(categories: Sequence[str], protocol: str) -> dict[str, dict[str, int | None]]:
    """The published counts per "<split>/<category>" and their totals over the loaded categories."""
    out: dict[str, dict[str, int | None]] = {}
    for split in ("train", "val", "test"):
        total: dict[str, int] = {}
        for cat in categories:
            t, n = COUNTS[cat][split]
            row = {"triplets": t, "images": n, "captions": 2 * t}
            row["queries"] = t if split == "train" or protocol == "fiq_a" else 2 * t
            if split != "train":
                row["gallery"] = n
            out[f"{split}/{cat}"] = dict(row)
            for k, v in row.items():
                total[k] = total.get(k, 0) + v
        out[split] = dict(total)
    return out


QUIRKS = (
    QuirkKind(
        "empty_caption",
        "a caption that is empty once '.?, ' are stripped",
        'CLIP4Cir keeps it: the query text joins an empty string ("Cap(\'\') and c2" = " and c2")',
        "kept and joined the same way",
    ),
    QuirkKind(
        "candidate_is_target",
        "an entry whose candidate is its own target",
        "CLIP4Cir keeps it (the target stays in the gallery); ARTEMIS excludes the candidate: always a miss",
        "kept; under fiq_b its candidate is not excluded (the query's only positive)",
    ),
    QuirkKind(
        "duplicate_entry",
        "an entry repeated verbatim in a caption file",
        "CLIP4Cir keeps every entry (one query each)",
        "kept: one query (fiq_a) or two (fiq_b) per entry",
    ),
    QuirkKind(
        "duplicate_asin",
        "an ASIN listed more than once in a split file",
        "CLIP4Cir keeps every listed entry in the gallery (the gallery count includes the repeat)",
        "kept in the gallery; the copies share one label, so either copy is the target",
    ),
    QuirkKind(
        "candidate_outside_split",
        "a val/test candidate that is not in the category's split file",
        "CLIP4Cir's test loader reads the candidate image from images/ by ASIN",
        "the candidate image is read from images/ as a query image, not added to the gallery",
    ),
)


def strip(caption: str) -> str:
    return caption.strip(".?, ")


def join_a(first: str, second: str) -> str:
    """fiq_a (CLIP4Cir): cap(strip(first)) + " and " + strip(second)."""
    return f"{strip(first).capitalize()} and {strip(second)}"


def join_b(first: str, second: str) -> str:
    """fiq_b (ARTEMIS, always joined with " and "): strip(first) + " and " + strip(second)."""
    return f"{strip(first)} and {strip(second)}"


@dataclass(frozen=True)
class RandomText:
    """A training text drawn at each access (module-level `random`, seeded per loader worker by torch)."""

    options: tuple[str, ...]

    def __call__(self) -> str:
        return random.choice(self.options)


@dataclass
class Triplet:
    candidate: str
    target: str | None
    captions: tuple[str, str]


@dataclass
class CategorySplit:
    """One category's split: its triplets and its gallery (split-file order)."""

    category: str
    triplets: list[Triplet]
    gallery: list[str]


@register_datamodule("fashioniq")
class FashionIQDataModule(RetrievalDataModule):
    """FashionIQ triplets of one or all three categories; evaluation on val per category (`fiq_a`/`fiq_b`)."""

    published_as: ClassVar[str] = "FashionIQ"  # its `dataset` spelling in results/published.csv

    tasks: ClassVar[frozenset[str]] = frozenset({"composed"})
    layout: ClassVar[str] = LAYOUT
    folder: ClassVar[str] = "fashionIQ_dataset"
    # per split and "<split>/<category>" for the defaults (all categories, fiq_a); an instance holds the
    # counts of its own categories and protocol (the split totals and fiq_b's queries differ)
    expected: ClassVar[dict[str, dict[str, int | None]]] = expected_counts(CATEGORIES, "fiq_a")
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = QUIRKS

    def __init__(
        self,
        root: str = "data",
        categories: str | list[str] | None = None,
        protocol: Literal["fiq_a", "fiq_b"] = "fiq_a",
        train_text: Literal["random", "concat"] = "random",
        val_split: str = "val",
        test_split: str | None = "test",
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, val_split=val_split, test_split=test_split, **kwargs)  # type: ignore[arg-type]
        cats = [categories] if isinstance(categories, str) else list(categories or CATEGORIES)
        for value, allowed, what in [
            (protocol, PROTOCOLS, "protocol"),
            (train_text, TRAIN_TEXTS, "train_text"),
        ]:
            if value not in allowed:
                raise ValueError(f"fashioniq: unknown {what} {value!r}; choose one of {allowed}")
        unknown = [c for c in cats if c not in CATEGORIES]
        if unknown or not cats:
            raise ValueError(f"fashioniq: unknown categories {unknown}; choose among {CATEGORIES}")
        self.categories = list(dict.fromkeys(cats))
        self.protocol = protocol
        self.train_text = train_text
        self.expected = expected_counts(self.categories, protocol)

    def image_path(self, asin: str) -> Path:
        return self.base / "images" / f"{asin}{IMAGE_EXT}"

    # -- load -----------------------------------------------------------------------------------------
    def load(self) -> LoadedData:
        self.require_dir()
        self.require_dir(self.base / "images")
        out = LoadedData(train=None, eval_sets={}, stats={})
        eval_splits = [s for s in dict.fromkeys([self.val_split, self.test_split]) if s]
        for split in ["train", *eval_splits]:
            parts = [self.read(cat, split) for cat in self.categories]
            if split == "train":
                self.build_train(parts, out)
            else:
                self.build_eval(split, parts, out)
            for key in [split, *(f"{split}/{p.category}" for p in parts)]:
                out.warnings += warn_counts(self.name, key, out.stats[key], self.expected.get(key, {}))
        return out

    def read(self, cat: str, split: str) -> CategorySplit:
        """Parse one category's captions and split file, check them against each other, note quirks."""
        gallery = self.read_image_split(cat, split)
        file = self.annotation(f"captions/cap.{cat}.{split}.json")
        entries = read_json(file, self.name)
        if not isinstance(entries, list):
            raise DatasetFormatError(file, f"top level is {type(entries).__name__}", expected="a JSON list")
        labelled = split != "test" or any(isinstance(e, dict) and "target" in e for e in entries)
        triplets = [parse_entry(e, file, f"entry {i}", labelled) for i, e in enumerate(entries)]
        known = set(gallery)
        seen: set[tuple[str, str | None, tuple[str, str]]] = set()
        for i, t in enumerate(triplets):
            where = f"entry {i}"
            for c in t.captions:
                if not strip(c):
                    self.quirk(split, "empty_caption", file, where, "captions", c)
            if t.candidate == t.target:
                self.quirk(split, "candidate_is_target", file, where, "target", t.target)
            key = (t.candidate, t.target, t.captions)
            if key in seen:
                self.quirk(split, "duplicate_entry", file, where, None, entries[i])
            seen.add(key)
            if split == "train":
                continue  # training reads images by ASIN; the train split file plays no part
            if t.target is not None and t.target not in known:
                # the query would have no positive: the reference evaluation asserts exactly one
                raise DatasetFormatError(
                    file, f"{t.target!r} is not in split.{cat}.{split}.json", where=where, field="target"
                )
            if t.candidate not in known:
                self.quirk(split, "candidate_outside_split", file, where, "candidate", t.candidate)
        return CategorySplit(cat, triplets, gallery)

    def read_image_split(self, cat: str, split: str) -> list[str]:
        """`split.{cat}.{split}.json`: the category's gallery, every listed entry kept (repeats included)."""
        file = self.annotation(f"image_splits/split.{cat}.{split}.json")
        names = read_json(file, self.name)
        if not isinstance(names, list):
            raise DatasetFormatError(
                file, f"top level is {type(names).__name__}", expected="a JSON list of ASINs"
            )
        seen: set[str] = set()
        for i, asin in enumerate(names):
            if not isinstance(asin, str) or not asin:
                raise DatasetFormatError(
                    file, f"value {asin!r}", where=f"entry {i}", expected="an ASIN string"
                )
            if asin in seen:
                self.quirk(split, "duplicate_asin", file, f"entry {i}", None, asin)
            seen.add(asin)
        return names

    def annotation(self, rel: str) -> Path:
        path = self.require_file(self.base / rel)
        return path

    def check_images(self, split: str, asins: Sequence[str]) -> set[str]:
        """Apply the missing-file rule to the images of `asins`; return the missing ASINs."""
        paths = [self.image_path(a) for a in dict.fromkeys(asins)]
        missing = find_missing(paths)
        self.apply_missing_rule(split, missing, len(paths), self.missing_hint(missing))
        return {p.stem for p in missing}

    def missing_hint(self, missing: Sequence[Path]) -> str:
        """Say which extension was tried, and whether the images exist as .png instead."""
        if not missing:
            return ""
        hint = f"Tried <ASIN>{IMAGE_EXT} in {self.base / 'images'} (FashionIQ images are {IMAGE_EXT})."
        png = [p for p in missing if p.with_suffix(".png").is_file()]
        if png:
            hint += (
                f" {len(png)} of them exist as .png (e.g. {png[0].with_suffix('.png').name}): convert or "
                f"rename them to {IMAGE_EXT} (PIL reads the content, not the extension)."
            )
        return hint

    # -- datasets -------------------------------------------------------------------------------------
    def texts(self, c1: str, c2: str) -> list[str]:
        """Query texts of one triplet under the protocol: fiq_a one, fiq_b two."""
        if self.protocol == "fiq_a":
            return [join_a(c1, c2)]
        return [join_b(c1, c2), join_b(c2, c1)]

    def train_text_of(self, c1: str, c2: str) -> str | RandomText:
        join, single = (
            (join_a, lambda c: strip(c).capitalize()) if self.protocol == "fiq_a" else (join_b, strip)
        )
        if self.train_text == "concat":
            return join(c1, c2)
        return RandomText((join(c1, c2), join(c2, c1), single(c1), single(c2)))

    def build_train(self, parts: list[CategorySplit], out: LoadedData) -> None:
        """Training triplets of all loaded categories over the images they reference."""
        triplets = [t for p in parts for t in p.triplets]
        asins = [a for t in triplets for a in (t.candidate, str(t.target))]
        absent = self.check_images("train", asins)
        kept_by_cat = {
            p.category: [t for t in p.triplets if not ({t.candidate, str(t.target)} & absent)] for p in parts
        }
        kept = [t for p in parts for t in kept_by_cat[p.category]]
        images = list(dict.fromkeys(a for t in kept for a in (t.candidate, str(t.target))))
        index = {a: i for i, a in enumerate(images)}
        out.train = TripletDataset(
            ImageFiles([self.image_path(a) for a in images]),
            [index[t.candidate] for t in kept],
            [self.train_text_of(*t.captions) for t in kept],
            [index[str(t.target)] for t in kept],
        )
        out.num_classes = len(images)
        out.train_vocab_texts = [text for t in kept for text in self.texts(*t.captions)]
        out.missing["train"] = [str(self.image_path(a)) for a in sorted(absent)]
        for p in parts:
            cat_kept = kept_by_cat[p.category]
            cat_asins = {a for t in p.triplets for a in (t.candidate, str(t.target))}
            out.stats[f"train/{p.category}"] = {
                "triplets": len(p.triplets),
                "images": len(p.gallery),
                "captions": 2 * len(p.triplets),
                "labels": len({t.target for t in cat_kept}),
                "queries": len(cat_kept),
                "gallery": 0,
                "missing": len(cat_asins & absent),
            }
        out.stats["train"] = {
            "triplets": len(triplets),
            "images": sum(len(p.gallery) for p in parts),
            "captions": 2 * len(triplets),
            "labels": len({t.target for t in kept}),
            "queries": len(kept),
            "gallery": 0,
            "missing": len(absent),
        }

    def build_eval(self, split: str, parts: list[CategorySplit], out: LoadedData) -> None:
        """Concatenated category galleries; each category's queries are scored against its own block.

        Copies of an ASIN repeated in a split file share one label (the first copy's index). Candidates
        outside their split file are read from images/ as query images placed after the gallery in the
        image store, so they are never gallery items."""
        outside = list(
            dict.fromkeys(t.candidate for p in parts for t in p.triplets if t.candidate not in p.gallery)
        )
        absent = self.check_images(split, [a for p in parts for a in p.gallery] + outside)
        labelled = all(t.target is not None for p in parts for t in p.triplets)
        gallery: list[str] = []
        gallery_labels: list[int] = []
        blocks: list[dict[str, int]] = []
        for part in parts:
            offset = len(gallery)
            block = [a for a in part.gallery if a not in absent]
            first: dict[str, int] = {}
            for j, a in enumerate(block):
                first.setdefault(a, offset + j)
                gallery_labels.append(first[a])
            gallery += block
            blocks.append(first)
        extra = {a: len(gallery) + k for k, a in enumerate(a for a in outside if a not in absent)}
        ref_ids: list[int] = []
        texts: list[str] = []
        qids: list[str] = []  # <category>/<candidate>><target>#<text>: a duplicate_entry numbered
        labels: list[int] = []
        exclude: list[int] = []
        groups: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        offset = 0
        for part, gidx in zip(parts, blocks, strict=True):
            q0, n_block = len(texts), sum(1 for a in part.gallery if a not in absent)
            kept = [t for t in part.triplets if t.candidate not in absent and t.target not in absent]
            for t in kept:
                ref = gidx.get(t.candidate, extra.get(t.candidate, -1))
                excluded = gidx.get(t.candidate, -1) if t.candidate != t.target else -1
                for j, text in enumerate(self.texts(*t.captions)):
                    qids.append(f"{part.category}/{t.candidate}>{t.target}#{j}")
                    ref_ids.append(ref)
                    texts.append(text)
                    labels.append(gidx[t.target] if t.target is not None else -1)
                    exclude.append(excluded if self.protocol == "fiq_b" else -1)
            groups[part.category] = (torch.arange(q0, len(texts)), torch.arange(offset, offset + n_block))
            cat_absent = {a for a in part.gallery if a in absent}
            cat_absent |= {t.candidate for t in part.triplets if t.candidate in absent}
            out.stats[f"{split}/{part.category}"] = {
                "triplets": len(part.triplets),
                "images": len(part.gallery),
                "captions": 2 * len(part.triplets),
                "labels": len({t.target for t in kept if t.target is not None}),
                "queries": len(texts) - q0,
                "gallery": n_block,
                "missing": len(cat_absent),
            }
            offset += n_block
        store = ImageFiles([self.image_path(a) for a in [*gallery, *extra]])
        spec = EvalSpec(
            protocol=self.protocol,
            query_labels=torch.tensor(labels, dtype=torch.long) if labelled else None,
            gallery_labels=torch.tensor(gallery_labels, dtype=torch.long),
            exclude=torch.tensor(exclude, dtype=torch.long),
            groups=groups,
            query_ids=number_repeats(qids, self.base / "captions" / f"cap.*.{split}.json"),
            info={
                "dataset": self.name,
                "split": split,
                "categories": list(self.categories),
                "n_missing": len(absent),
            },
        )
        out.eval_sets[split] = EvalSet(
            ComposedQueryDataset(store, ref_ids, texts),
            VisualDataset(store, range(len(gallery))),
            spec,
            query_kind="composed",
        )
        out.missing[split] = [str(self.image_path(a)) for a in sorted(absent)]
        out.stats[split] = {
            "triplets": sum(len(p.triplets) for p in parts),
            "images": sum(len(p.gallery) for p in parts),
            "captions": 2 * sum(len(p.triplets) for p in parts),
            "labels": len({lb for lb in labels if lb >= 0}),
            "queries": len(texts),
            "gallery": len(gallery),
            "missing": len(absent),
        }


def parse_entry(entry: Any, file: Path, where: str, labelled: bool) -> Triplet:
    """Read one caption entry: candidate, target (absent in test), exactly two caption strings.

    Only the structure is checked here; empty captions and candidate == target are quirks the caller notes.
    """
    candidate = require(entry, "candidate", str, file=file, where=where, nonempty=True)
    target = require(entry, "target", str, file=file, where=where, nonempty=True) if labelled else None
    captions = require(entry, "captions", list, file=file, where=where)
    if len(captions) != 2 or not all(isinstance(c, str) for c in captions):
        raise DatasetFormatError(
            file, f"{captions!r}", where=where, field="captions", expected="two caption strings"
        )
    return Triplet(candidate, target, (captions[0], captions[1]))
