"""Text-to-person retrieval: CUHK-PEDES, ICFG-PEDES and RSTPReid (docs/data/person.md).

Sources: CUHK-PEDES (Li et al., CVPR'17) and ICFG-PEDES (Ding et al., 2021) by e-mail to their authors;
RSTPReid (Zhu et al., ACM MM'21) from the authors' release. All three are one JSON array with one object
per image: `id`, `split`, `captions` and the image path under `imgs/` (`file_path`, RSTPReid `img_path`).

Entries are read as anosorae/IRRA reads them: `split` "train" -> train, "test" -> test, "val" -> val (a
value the format does not define stops, where IRRA would read it as val); the training label is the rank
of the id among the sorted training ids (IRRA's id - first id), val/test keep the raw id; one training
sample per (image, caption) with the running index of the training image as instance label; evaluation
queries are all captions of the split, the gallery is every image, positives share the id. The irregular
entries the authors' files hold (empty or repeated captions, images with other caption counts, ...) are
kept as IRRA keeps them and reported through the quirk log (`person_quirk_kinds`).

Every path is built from `self.root / self.folder`, so a dataset in RSTPReid's exact format under another
folder (synth-person) subclasses `RSTPReidDataModule` overriding only class attributes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset, Sampler

from fgbench.data.datasets import ImageFiles, PairDataset, caption_pairs
from fgbench.data.module import EvalSet, LoadedData, RetrievalDataModule, caption_eval_set
from fgbench.data.query_ids import number_repeats
from fgbench.data.samplers import PKSampler
from fgbench.data.validation import (
    DatasetFormatError,
    QuirkKind,
    find_missing,
    read_json,
    require,
    warn_counts,
)
from fgbench.registry import register_datamodule

log = logging.getLogger("fgbench.data")

SAMPLERS = ("random", "pk")
CUHK_LAYOUT = """\
<root>/{folder}/reid_raw.json
<root>/{folder}/imgs/{{cam_a,cam_b,CUHK01,CUHK03,Market,train_query,test_query}}/...
"""
ICFG_LAYOUT = """\
<root>/{folder}/ICFG-PEDES.json
<root>/{folder}/imgs/{{train,test}}/...
"""
RSTP_LAYOUT = """\
<root>/{folder}/data_captions.json
<root>/{folder}/imgs/*.jpg
"""


@dataclass
class Record:
    """One annotation entry: a person image with its captions."""

    pid: int
    split: str  # "train" | "val" | "test"
    captions: list[str]
    path: Path
    entry: int  # index in the annotation file
    rel: str = ""  # the path as written in the file


@dataclass
class Split:
    """The records of one split, with the image files found missing."""

    records: list[Record]
    missing: list[Path]

    def kept(self) -> list[Record]:
        absent = set(self.missing)
        return [r for r in self.records if r.path not in absent]

    def counts(self) -> dict[str, int]:
        """Annotation counts (before any skip_missing drop)."""
        return {
            "images": len(self.records),
            "captions": sum(len(r.captions) for r in self.records),
            "labels": len({r.pid for r in self.records}),
            "missing": len(self.missing),
        }


# -- quirks of the authors' files ------------------------------------------------------------------------
# All three reference loaders (anosorae/IRRA datasets/{cuhkpedes,icfgpedes,rstpreid}.py) share one reading:
# int(id), every caption of the list as it is, every entry an image. The kinds below are what that reading
# lets through; `caption_count` depends on the dataset's usual number of captions per image.
IRRA = "anosorae/IRRA"
KNOWN_FIELDS = frozenset({"id", "split", "captions", "processed_tokens"})  # plus the path field


def person_quirk_kinds(captions_per_image: int) -> tuple[QuirkKind, ...]:
    """The quirk kinds of a person dataset whose images usually carry `captions_per_image` captions."""
    n = captions_per_image
    return (
        QuirkKind(
            "text_id",
            "a person id written as a string of digits",
            f"{IRRA} reads it with int()",
            "read as that integer",
        ),
        QuirkKind(
            "empty_caption",
            "an empty or whitespace-only caption",
            "kept: a training pair and a query with no words",
            "kept as written (a training pair and a query)",
        ),
        QuirkKind(
            "no_word_caption",
            "a caption with no letter or digit (punctuation only)",
            "kept: a training pair and a query",
            "kept as written (a training pair and a query)",
        ),
        QuirkKind(
            "non_ascii_caption",
            "a caption with non-ASCII text (CJK characters, typographic quotes)",
            "kept; CLIP's byte-level BPE encodes it",
            "kept as written",
        ),
        QuirkKind(
            "repeated_caption",
            "a caption equal to an earlier caption of the same image (ignoring case and surrounding spaces)",
            "kept: a second training pair and a second query",
            "kept: a second training pair and a second query",
        ),
        QuirkKind(
            "no_captions",
            "an image with an empty caption list",
            "kept: a gallery image without queries; in train it takes an image index and gives no pair",
            "the same: gallery image without queries; in train an image index without pairs",
        ),
        QuirkKind(
            "caption_count",
            f"an image with a number of captions other than {n}",
            "every caption kept: one training pair and one query each",
            "every caption kept: one training pair and one query each",
        ),
        QuirkKind(
            "duplicate_path",
            "an image path already used by an earlier entry",
            "both entries kept: two images (two gallery items, two training image indices)",
            "both entries kept as two images",
        ),
        QuirkKind(
            "single_image_id",
            "a person with a single image in the split",
            "kept (its queries have one positive)",
            "kept (its queries have one positive)",
        ),
        QuirkKind(
            "id_in_two_splits",
            "a person id found in more than one split",
            "kept in each split (no check)",
            "kept in each split",
        ),
        QuirkKind(
            "train_id_gap",
            "training ids that are not consecutive from the first id",
            "stops: an assertion needs the training labels to be 0..N-1",
            "reads them: training label = rank of the id among the sorted training ids",
        ),
        QuirkKind(
            "extra_field",
            "an entry with fields the format does not have",
            "ignored",
            "ignored",
        ),
    )


class PersonDataModule(RetrievalDataModule):
    """Shared loader of the three person datasets; subclasses name the file, path field and pitfalls.

    Args beyond the base class: `sampler` "random" (shuffled pairs) or "pk" (P identities x `pk_k` pairs per
    batch, `batch_size` a multiple of `pk_k`; seeded by Lightning's PL_GLOBAL_SEED when set).
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"text-image"})
    tiny_image_size: ClassVar[tuple[int, int]] = (64, 32)  # person crops are tall
    annotation_file: ClassVar[str] = ""
    path_field: ClassVar[str] = "file_path"
    layout_template: ClassVar[str] = ""
    split_values: ClassVar[tuple[str, ...]] = ("train", "val", "test")  # the values the format defines
    first_train_id: ClassVar[int] = 0  # the reference loader's labels are id - first_train_id
    captions_per_image: ClassVar[int] = 2
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = person_quirk_kinds(2)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that overrides `folder` shows the layout of its own folder in error messages."""
        super().__init_subclass__(**kwargs)
        if "layout" not in cls.__dict__ and cls.layout_template:
            cls.layout = cls.layout_template.format(folder=cls.folder)

    def __init__(self, root: str = "data", sampler: str = "random", pk_k: int = 4, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        if sampler not in SAMPLERS:
            raise ValueError(f"{self.name}: sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.sampler, self.pk_k = sampler, pk_k

    # -- reading -------------------------------------------------------------------------------------
    def annotation_path(self) -> Path:
        """The annotation file; subclasses recognise known wrong names."""
        path = self.require_file(self.base / self.annotation_file)
        return path

    def read_records(self, file: Path) -> list[Record]:
        """Parse every entry of the annotation array, reporting its quirks; unknown split values stop."""
        entries = read_json(file, self.name)
        if not isinstance(entries, list):
            raise DatasetFormatError(file, f"top level is {type(entries).__name__}", expected="a JSON list")
        splits = [self.entry_split(e, file, i) for i, e in enumerate(entries)]
        self.check_split_values(file, splits)
        return [self.parse_entry(e, file, i, s) for i, (e, s) in enumerate(zip(entries, splits, strict=True))]

    def entry_split(self, entry: Any, file: Path, i: int) -> str:
        """The `split` value of one entry (checked for presence and type only)."""
        return require(entry, "split", str, file=file, where=f"entry {i}", nonempty=True)

    def check_split_values(self, file: Path, splits: list[str]) -> None:
        """A split value the format does not define stops: the reference loader would read it as val."""
        unknown = [i for i, s in enumerate(splits) if s not in self.split_values]
        if not unknown:
            return
        found = ", ".join(f"{v!r} x{n}" for v, n in sorted(Counter(splits).items()))
        raise DatasetFormatError(
            file,
            f"split value {splits[unknown[0]]!r} is not defined by this format ({len(unknown)} entries); "
            f"values found: {found}",
            where=f"entry {unknown[0]}",
            field="split",
            expected=" or ".join(repr(v) for v in self.split_values)
            + f"; {IRRA} would silently read every other value as val",
        )

    def parse_entry(self, entry: dict[str, Any], file: Path, i: int, split: str) -> Record:
        """One entry as the reference loader reads it; its quirks are reported, not refused."""
        where = f"entry {i}"
        pid = self.read_id(entry, file, where, split)
        rel = require(entry, self.path_field, str, file=file, where=where, nonempty=True)
        captions = require(entry, "captions", list, file=file, where=where)
        for j, cap in enumerate(captions):
            if not isinstance(cap, str):
                raise DatasetFormatError(
                    file,
                    f"caption is {type(cap).__name__}",
                    where=where,
                    field=f"captions[{j}]",
                    expected="str",
                )
        self.note_captions(split, file, where, captions)
        extra = sorted(set(entry) - KNOWN_FIELDS - {self.path_field})
        if extra:
            self.quirk(split, "extra_field", file, where, extra[0], extra)
        return Record(pid, split, list(captions), self.base / "imgs" / rel, i, rel)

    def read_id(self, entry: dict[str, Any], file: Path, where: str, split: str) -> int:
        """`id` is an int; a string of digits is read as the reference loader's int() reads it."""
        value = require(entry, "id", (int, str), file=file, where=where)
        if isinstance(value, int):
            return value
        try:
            pid = int(value)
        except ValueError:
            raise DatasetFormatError(
                file, f"id {value!r} is not a number", where=where, field="id", expected="int"
            ) from None
        self.quirk(split, "text_id", file, where, "id", value)
        return pid

    def note_captions(self, split: str, file: Path, where: str, captions: list[str]) -> None:
        """Report the irregular captions of one image (all are kept)."""
        if not captions:
            self.quirk(split, "no_captions", file, where, "captions", captions)
        elif len(captions) != self.captions_per_image:
            self.quirk(split, "caption_count", file, where, "captions", f"{len(captions)} captions")
        seen: set[str] = set()
        for j, cap in enumerate(captions):
            field = f"captions[{j}]"
            if not cap.strip():
                self.quirk(split, "empty_caption", file, where, field, cap)
            elif not any(ch.isalnum() for ch in cap):
                self.quirk(split, "no_word_caption", file, where, field, cap)
            if not cap.isascii():
                self.quirk(split, "non_ascii_caption", file, where, field, cap)
            key = cap.strip().lower()
            if key in seen:
                self.quirk(split, "repeated_caption", file, where, field, cap)
            seen.add(key)

    def note_structure(self, file: Path, by_split: dict[str, list[Record]]) -> None:
        """Report the quirks that span entries: repeated paths, single-image persons, shared ids, id gaps."""
        first: dict[str, int] = {}
        for r in sorted((r for rs in by_split.values() for r in rs), key=lambda r: r.entry):
            if r.rel in first:
                value = f"{r.rel} (also entry {first[r.rel]})"
                self.quirk(r.split, "duplicate_path", file, f"entry {r.entry}", self.path_field, value)
            first.setdefault(r.rel, r.entry)
        seen_in: dict[int, str] = {}
        for split, records in by_split.items():
            images = Counter(r.pid for r in records)
            for r in records:
                if images[r.pid] == 1:
                    self.quirk(split, "single_image_id", file, f"entry {r.entry}", "id", r.pid)
            firsts: dict[int, Record] = {}
            for r in records:
                firsts.setdefault(r.pid, r)
            for pid, r in firsts.items():
                if pid in seen_in:
                    value = f"{pid} (also in {seen_in[pid]})"
                    self.quirk(split, "id_in_two_splits", file, f"entry {r.entry}", "id", value)
                else:
                    seen_in[pid] = split
        self.note_id_gaps(file, sorted({r.pid for r in by_split["train"]}))

    def note_id_gaps(self, file: Path, ids: list[int]) -> None:
        """Training ids must run first_train_id, first_train_id + 1, ... for the reference loader."""
        where = "training ids"
        if ids[0] < self.first_train_id:
            self.quirk("train", "train_id_gap", file, where, "id", f"ids start at {ids[0]}")
        prev = self.first_train_id - 1 if ids[0] >= self.first_train_id else ids[0]
        for pid in ids:
            if pid > prev + 1:
                gap = f"{prev + 1}" if pid == prev + 2 else f"{prev + 1}..{pid - 1}"
                self.quirk("train", "train_id_gap", file, where, "id", f"no id {gap}")
            prev = pid

    def check_splits(self, file: Path, splits: dict[str, list[Record]]) -> None:
        """Known-bad signatures of a dataset (none by default)."""

    # -- load ----------------------------------------------------------------------------------------
    def load(self) -> LoadedData:
        self.require_dir()
        file = self.annotation_path()
        by_split: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
        for r in self.read_records(file):
            by_split[r.split].append(r)
        by_split = {s: rs for s, rs in by_split.items() if rs}
        if "train" not in by_split or "test" not in by_split:
            raise DatasetFormatError(
                file, f"splits found: {sorted(by_split)}", field="split", expected="train and test records"
            )
        self.check_splits(file, by_split)
        self.note_structure(file, by_split)
        splits = {s: self.stat_images(s, rs) for s, rs in by_split.items()}
        out = LoadedData(train=None, eval_sets={}, stats={})
        out.train, out.stats["train"], out.num_classes = self.train_set(splits["train"])
        out.train_vocab_texts = [c for r in splits["train"].kept() for c in r.captions]
        for split in ("val", "test"):
            if split in splits:
                out.eval_sets[split], out.stats[split] = self.eval_set(split, splits[split])
        for split, sp in splits.items():
            out.missing[split] = [str(p) for p in sp.missing]
            out.warnings += warn_counts(self.name, split, out.stats[split], self.expected.get(split, {}))
        return out

    def stat_images(self, split: str, records: list[Record]) -> Split:
        """Apply the missing-image rule to one split."""
        missing = find_missing(r.path for r in records)
        hint = f"Image paths are relative to {self.base / 'imgs'}/ (field {self.path_field!r})."
        self.apply_missing_rule(split, missing, len(records), hint)
        return Split(records, missing)

    def train_set(self, sp: Split) -> tuple[PairDataset, dict[str, int], int]:
        """One sample per (image, caption); label = rank of the id among the sorted training ids.

        With the consecutive ids of the authors' files this is the reference loader's id - first id.
        """
        ids = sorted({r.pid for r in sp.records})
        rank = {pid: i for i, pid in enumerate(ids)}
        kept = sp.kept()
        ds = caption_pairs(
            ImageFiles([r.path for r in kept]), [r.captions for r in kept], [rank[r.pid] for r in kept]
        )
        return ds, {**sp.counts(), "queries": len(ds), "gallery": 0}, len(ids)

    def eval_set(self, split: str, sp: Split) -> tuple[EvalSet, dict[str, int]]:
        """Gallery = the split's images, queries = all their captions, relevance = same raw id."""
        kept = sp.kept()
        es = caption_eval_set(
            "person_t2i",
            ImageFiles([r.path for r in kept]),
            [r.captions for r in kept],
            [r.pid for r in kept],
            # a path listed twice (duplicate_path) numbered
            number_repeats([r.rel for r in kept], self.base / self.annotation_file),
            info={**self.spec_info(split), "n_missing": len(sp.missing)},
        )
        return es, {**sp.counts(), "queries": len(es.queries), "gallery": len(kept)}

    def spec_info(self, split: str) -> dict[str, Any]:
        return {"dataset": self.name, "split": split, "labels": "raw person id"}

    def train_sampler(self, ds: Dataset, num_replicas: int, rank: int, seed: int) -> Sampler | None:
        if self.sampler != "pk":
            return None
        return PKSampler(ds.labels, self.batch_size, self.pk_k, num_replicas, rank, seed)  # type: ignore[attr-defined]


@register_datamodule("cuhk-pedes")
class CUHKPedesDataModule(PersonDataModule):
    """CUHK-PEDES from `reid_raw.json` (or the same file renamed `CUHK-PEDES.json`)."""

    published_as: ClassVar[str] = "CUHK-PEDES"  # its `dataset` spelling in results/published.csv

    folder: ClassVar[str] = "CUHK-PEDES"
    annotation_file: ClassVar[str] = "reid_raw.json"
    layout_template: ClassVar[str] = CUHK_LAYOUT
    renamed_file: ClassVar[str] = "CUHK-PEDES.json"
    wrong_file: ClassVar[str] = "caption_all.json"
    first_train_id: ClassVar[int] = 1  # the reference loader's labels are id - 1
    # Li et al. (CVPR'17): 11,003 / 1,000 / 1,000 persons, 34,054 / 3,078 / 3,074 images, 68,126 training
    # sentences; val/test sentences from follow-up papers (the three add up to the 80,440 in reid_raw.json)
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"labels": 11003, "images": 34054, "captions": 68126},
        "val": {"labels": 1000, "images": 3078, "captions": 6158, "queries": 6158, "gallery": 3078},
        "test": {"labels": 1000, "images": 3074, "captions": 6156, "queries": 6156, "gallery": 3074},
    }

    def annotation_path(self) -> Path:
        path = self.base / self.annotation_file
        if path.is_file():
            return path
        renamed = self.base / self.renamed_file
        if renamed.is_file():
            log.info("%s: reading %s as %s", self.name, renamed, self.annotation_file)
            return renamed
        hint = None
        if (self.base / self.wrong_file).is_file():
            hint = (
                f"Found {self.base / self.wrong_file} instead: that file has no 'split' field and there is "
                "no standard way to rebuild the train/val/test split from it. Ask the CUHK-PEDES authors "
                f"for {self.annotation_file} (the file with 'split', read by anosorae/IRRA) and put it "
                f"at {path}."
            )
        return self.require_file(path, hint)  # raises: the file is absent

    def entry_split(self, entry: Any, file: Path, i: int) -> str:
        if file.name == self.renamed_file and isinstance(entry, dict) and "split" not in entry:
            raise DatasetFormatError(
                file,
                f"missing field: {self.renamed_file} is accepted only as {self.annotation_file} renamed "
                f"(records with 'split'); this looks like {self.wrong_file}, which cannot be used",
                where=f"entry {i}",
                field="split",
            )
        return super().entry_split(entry, file, i)


@register_datamodule("icfg-pedes")
class ICFGPedesDataModule(PersonDataModule):
    """ICFG-PEDES from `ICFG-PEDES.json`; it has no val split.

    The suite reports the last epoch. `select_on_test=True` makes the val loaders serve the test split (as
    anosorae/IRRA does), recorded as `selected_on: test` in the EvalSpec info.
    """

    published_as: ClassVar[str] = "ICFG-PEDES"  # its `dataset` spelling in results/published.csv

    folder: ClassVar[str] = "ICFG-PEDES"
    annotation_file: ClassVar[str] = "ICFG-PEDES.json"
    layout_template: ClassVar[str] = ICFG_LAYOUT
    readme_file: ClassVar[str] = "ICFG_PEDES.json"  # the name in anosorae/IRRA's README
    split_values: ClassVar[tuple[str, ...]] = ("train", "test")
    captions_per_image: ClassVar[int] = 1
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = person_quirk_kinds(1)
    no_val_split: ClassVar[str] = (
        "{name} has no val split: the suite reports the last epoch (run with trainer.limit_val_batches=0), "
        "or pass select_on_test=True to select checkpoints on test as the papers do (recorded as "
        "selected_on: test)"
    )
    # Ding et al. (arXiv 2107.12666): one description per image; 34,674 pairs of 3,102 persons for training,
    # 19,848 pairs of 1,000 persons for test
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"labels": 3102, "images": 34674, "captions": 34674},
        "test": {"labels": 1000, "images": 19848, "captions": 19848, "queries": 19848, "gallery": 19848},
    }

    def __init__(
        self, root: str = "data", select_on_test: bool = False, val_split: str | None = None, **kwargs: Any
    ) -> None:
        if val_split == "test" and not select_on_test:
            raise ValueError(f"{self.name}: validating on test needs select_on_test=True")
        val = val_split or ("test" if select_on_test else "val")
        super().__init__(root=root, val_split=val, **kwargs)
        self.select_on_test = select_on_test

    def annotation_path(self) -> Path:
        path = self.base / self.annotation_file
        readme = self.base / self.readme_file
        if not path.is_file() and readme.is_file():
            log.warning("%s: reading %s (the code and data name it %s)", self.name, readme, path.name)
            return readme
        return super().annotation_path()

    def spec_info(self, split: str) -> dict[str, Any]:
        return {**super().spec_info(split), "selected_on": "test" if self.select_on_test else "last_epoch"}


@register_datamodule("rstpreid")
class RSTPReidDataModule(PersonDataModule):
    """RSTPReid from `data_captions.json` (3,701/200/200 ids); rejects the older 3,901/100/100 release."""

    published_as: ClassVar[str] = "RSTPReid"  # its `dataset` spelling in results/published.csv

    folder: ClassVar[str] = "RSTPReid"
    annotation_file: ClassVar[str] = "data_captions.json"
    path_field: ClassVar[str] = "img_path"
    layout_template: ClassVar[str] = RSTP_LAYOUT
    detect_old_split: ClassVar[bool] = True
    old_test_ids: ClassVar[int] = 100
    # the authors' README: 4,101 persons x 5 images x 2 captions; 3,701 / 200 / 200 persons
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"labels": 3701, "images": 18505, "captions": 37010},
        "val": {"labels": 200, "images": 1000, "captions": 2000, "queries": 2000, "gallery": 1000},
        "test": {"labels": 200, "images": 1000, "captions": 2000, "queries": 2000, "gallery": 1000},
    }

    def check_splits(self, file: Path, splits: dict[str, list[Record]]) -> None:
        n_test = len({r.pid for r in splits["test"]})
        if self.detect_old_split and n_test == self.old_test_ids:
            raise DatasetFormatError(
                file,
                f"old RSTPReid split: re-download (test has {n_test} ids, the release with the 3,901/100/100 "
                "split; published numbers use 3,701/200/200)",
                field="split",
            )
