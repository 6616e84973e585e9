"""Class-level text-image retrieval on CUB-200-2011 and Oxford-102 Flowers (docs/data/reed.md).

Captions and class splits are Reed et al. (CVPR'16, reedscot/cvpr2016): `cvpr2016_cub` / `cvpr2016_flowers`
hold `text_c10/<class>/<stem>.txt` (10 captions, one per line) and the class lists
`{all,train,val,trainval,test}classes.txt`. Images come separately: CUB_200_2011 (`images/<class>/<stem>.jpg`)
and 102flowers (`jpg/<stem>.jpg`, flat). An image's class is its caption folder.

Splits are class-disjoint (zero-shot): by default train on trainvalclasses and test on testclasses;
`tuning=True` trains on trainclasses and validates on valclasses. The training label is the rank of the class
among the sorted training classes; evaluation labels are the class number of the folder name (CUB `001.…`,
Flowers `class_00001`). Torch7 files (`*.t7`), `manifest.txt`, `trainvalids.txt`, CUB's
`train_test_split.txt` and Flowers' `setid.mat` are never read.

Caption files are read as AttnGAN reads them (REED_QUIRKS: blank and word-less lines skipped, "\ufffd\ufffd"
replaced with a space, at most 10 captions); each irregular line is reported as a quirk, and `strict=True`
refuses them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fgbench.data.datasets import ImageFiles, PairDataset, caption_pairs
from fgbench.data.module import EvalSet, LoadedData, RetrievalDataModule, caption_eval_set
from fgbench.data.validation import (
    MAX_LISTED,
    DatasetFormatError,
    DatasetNotFoundError,
    QuirkKind,
    find_missing,
    warn_counts,
)
from fgbench.registry import register_datamodule

log = logging.getLogger("fgbench.data")

CAPTIONS_PER_IMAGE = 10
MOJIBAKE = "\ufffd\ufffd"  # two U+FFFD: how a mis-decoded character appears in Reed's caption files
WORD = re.compile(r"\w")
# How taoxugit/AttnGAN (code/datasets.py, `load_captions`), the reference reader of Reed's text_c10 files for
# both datasets, reads a caption file: split on "\n", skip empty lines, replace "\ufffd\ufffd" with a space,
# skip a line without any word token, keep at most 10 captions per file and only print an error when a file
# has fewer. Reed's own Lua code reads Torch7 char tensors made from the same files, not the text.
REED_QUIRKS = (
    QuirkKind(
        "blank_line",
        "an empty or whitespace-only line inside a caption file",
        "AttnGAN skips it (empty: silently; whitespace: no word tokens)",
        "skipped; the file's other lines are its captions",
    ),
    QuirkKind(
        "mojibake",
        'a caption containing "\ufffd\ufffd" (a character mis-decoded when the captions were collected)',
        'AttnGAN replaces each "\ufffd\ufffd" with a space',
        'each "\ufffd\ufffd" replaced with a space, as AttnGAN',
    ),
    QuirkKind(
        "no_word_caption",
        "a line without any letter or digit (punctuation or symbols only)",
        "AttnGAN's word tokeniser finds no token; the line is skipped with a printed message",
        "skipped",
    ),
    QuirkKind(
        "non_ascii_caption",
        "a caption containing non-ASCII characters",
        "kept; AttnGAN's tokeniser drops the non-ASCII characters from its word tokens",
        "kept as written; the method's tokeniser reads it",
    ),
    QuirkKind(
        "more_than_10_captions",
        "a caption file with more than 10 captions",
        "AttnGAN keeps the first 10 and stops reading the file",
        "the first 10 kept, the rest ignored",
    ),
    QuirkKind(
        "fewer_than_10_captions",
        "a caption file with fewer than 10 captions (value: how many)",
        "AttnGAN keeps them and prints an error; the image stays in the dataset",
        "kept: fewer queries and training pairs for that image; an image with none stays a gallery item",
    ),
    QuirkKind(
        "not_utf8",
        "a caption file that is not valid UTF-8",
        "not reached by AttnGAN on the released files (Python 3 would stop with a decode error)",
        "decoded with U+FFFD for the invalid bytes, then read like any file (pairs become a space)",
    ),
)
NO_CLASS_HINT = "These images have no caption file in any class folder, so their class is unknown."
LISTS = ("allclasses", "trainclasses", "valclasses", "trainvalclasses", "testclasses")
CUB_LAYOUT = """\
<root>/{folder}/CUB_200_2011/images/<NNN.Class_Name>/<stem>.jpg
<root>/{folder}/cvpr2016_cub/text_c10/<NNN.Class_Name>/<stem>.txt
<root>/{folder}/cvpr2016_cub/{{allclasses,trainclasses,valclasses,trainvalclasses,testclasses}}.txt
"""
FLOWERS_LAYOUT = """\
<root>/{folder}/102flowers/jpg/image_XXXXX.jpg
<root>/{folder}/cvpr2016_flowers/text_c10/class_000CC/image_XXXXX.txt
<root>/{folder}/cvpr2016_flowers/{{allclasses,trainclasses,valclasses,trainvalclasses,testclasses}}.txt
"""


@dataclass
class Item:
    """One image with its caption file."""

    cls: str  # class folder name
    label: int  # class number from the folder name
    image: Path
    text: Path
    captions: list[str]


@dataclass
class ClassSplit:
    """The classes of one split, their items and the files found missing."""

    classes: list[str]
    items: list[Item]  # items whose caption file exists (their image may still be missing)
    missing: list[Path]  # images without caption files and caption files without images

    def kept(self) -> list[Item]:
        absent = set(self.missing)
        return [it for it in self.items if it.image not in absent]

    def counts(self) -> dict[str, int]:
        """Annotation counts before any skip_missing drop (an orphan image counts as an image)."""
        orphans = sum(p.suffix == ".txt" for p in self.missing)
        return {
            "images": len(self.items) + orphans,
            "captions": sum(len(it.captions) for it in self.items),
            "labels": len(self.classes),
            "missing": len(self.missing),
        }


class ReedDataModule(RetrievalDataModule):
    """Shared loader of Reed et al.'s caption archives; subclasses say where images live and how classes
    are numbered.

    Args beyond the base class: `tuning` (train on trainclasses, validate on valclasses).
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"text-image"})
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = REED_QUIRKS
    no_val_split: ClassVar[str] = (
        "{name}: no val split without tuning=True (Reed et al. train on trainvalclasses and report the last "
        "epoch); pass tuning=True to validate on valclasses, or run with trainer.limit_val_batches=0"
    )
    text_dir: ClassVar[str] = ""  # the caption archive under the dataset folder
    image_dir: ClassVar[str] = ""  # the image folder under the dataset folder
    class_pattern: ClassVar[str] = ""  # regex with one group: the class number in a folder name
    layout_template: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that overrides `folder` shows the layout of its own folder in error messages."""
        super().__init_subclass__(**kwargs)
        if "layout" not in cls.__dict__ and cls.layout_template:
            cls.layout = cls.layout_template.format(folder=cls.folder)

    def __init__(self, root: str = "data", tuning: bool = False, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.tuning = tuning

    @property
    def captions_root(self) -> Path:
        return self.base / self.text_dir / "text_c10"

    # -- per-dataset image placement ------------------------------------------------------------------
    def image_path(self, cls: str, stem: str) -> Path:
        raise NotImplementedError

    def orphan_images(self, stems: dict[str, set[str]]) -> list[Path]:
        """Images without a caption file (`stems`: class -> caption stems of every listed class)."""
        raise NotImplementedError

    def expected_caption_file(self, image: Path, stems: dict[str, set[str]]) -> Path:
        """Where an orphan image's caption file should be (class `*` where the image shows no class)."""
        cls = image.parent.name if image.parent.name in stems else "*"
        return self.captions_root / cls / f"{image.stem}.txt"

    # -- class lists ----------------------------------------------------------------------------------
    def read_lists(self) -> dict[str, list[str]]:
        """Read and cross-check the five class lists."""
        lists = {name: self.read_list(name) for name in LISTS}
        parts = {n: set(lists[n]) for n in ("trainclasses", "valclasses", "testclasses")}
        names = list(parts)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if parts[a] & parts[b]:
                    shared = sorted(parts[a] & parts[b])[:5]
                    raise DatasetFormatError(
                        self.list_file(b),
                        f"classes also in {a}.txt: {shared}",
                        expected="class-disjoint splits",
                    )
        union = parts["trainclasses"] | parts["valclasses"] | parts["testclasses"]
        self.require_same(union, set(lists["allclasses"]), "allclasses", "train ∪ val ∪ test")
        self.require_same(
            set(lists["trainvalclasses"]),
            parts["trainclasses"] | parts["valclasses"],
            "trainvalclasses",
            "train ∪ val",
        )
        return lists

    def read_list(self, name: str) -> list[str]:
        """One class folder name per line; the number in the name must parse."""
        file = self.require_file(self.list_file(name))
        classes: list[str] = []
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            cls = line.strip()
            if not cls:
                continue
            if not re.fullmatch(self.class_pattern, cls) or cls in classes:
                problem = "repeated class" if cls in classes else f"unparsable class name {cls!r}"
                raise DatasetFormatError(
                    file, problem, where=f"line {n}", expected=f"a folder like {self.class_pattern}"
                )
            classes.append(cls)
        if not classes:
            raise DatasetFormatError(file, "no classes", expected="one class folder name per line")
        return classes

    def require_same(self, found: set[str], want: set[str], name: str, what: str) -> None:
        if found != want:
            diff = sorted(found ^ want)[:5]
            raise DatasetFormatError(
                self.list_file(name), f"differs from {what} (e.g. {diff})", expected=f"{name} = {what}"
            )

    def list_file(self, name: str) -> Path:
        return self.base / self.text_dir / f"{name}.txt"

    def class_number(self, cls: str) -> int:
        match = re.fullmatch(self.class_pattern, cls)
        assert match is not None  # checked in read_list
        return int(match.group(1))

    # -- captions -------------------------------------------------------------------------------------
    def caption_stems(self, classes: list[str]) -> dict[str, set[str]]:
        """The caption files of each class folder; every listed class must have a folder."""
        absent = [c for c in classes if not (self.captions_root / c).is_dir()]
        if absent:
            shown = ", ".join(absent[:MAX_LISTED])
            raise DatasetNotFoundError(
                f"{self.name}: {len(absent)} listed classes have no folder under {self.captions_root}: "
                f"{shown}\n"
                f"Expected layout under the dataset root:\n{self.layout.rstrip()}"
            )
        return {c: {p.stem for p in (self.captions_root / c).glob("*.txt")} for c in classes}

    def read_captions(self, split: str, file: Path) -> list[str]:
        """The captions of one file, read as AttnGAN reads Reed's text_c10 files (REED_QUIRKS); every
        irregular line is reported as a quirk."""
        data = file.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            self.quirk(split, "not_utf8", file, f"byte {err.start}", None, data[err.start : err.start + 8])
            text = data.decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last line
        captions: list[str] = []
        for n, line in enumerate(lines, 1):
            if len(captions) == CAPTIONS_PER_IMAGE:
                extra = sum(1 for rest in lines[n - 1 :] if WORD.search(rest.replace(MOJIBAKE, " ")))
                if extra:
                    self.quirk(split, "more_than_10_captions", file, f"line {n}", None, extra)
                break
            where = f"line {n}"
            if not line.strip():
                self.quirk(split, "blank_line", file, where, None, line)
                continue
            if MOJIBAKE in line:
                self.quirk(split, "mojibake", file, where, None, line)
                line = line.replace(MOJIBAKE, " ")
            if not WORD.search(line):
                self.quirk(split, "no_word_caption", file, where, None, line)
                continue
            if not line.isascii():
                self.quirk(split, "non_ascii_caption", file, where, None, line)
            captions.append(line.strip())
        if len(captions) < CAPTIONS_PER_IMAGE:
            self.quirk(split, "fewer_than_10_captions", file, "whole file", None, len(captions))
        return captions

    # -- load -----------------------------------------------------------------------------------------
    def splits(self) -> dict[str, str]:
        """Split name -> class list used."""
        if self.tuning:
            return {"train": "trainclasses", "val": "valclasses", "test": "testclasses"}
        return {"train": "trainvalclasses", "test": "testclasses"}

    def load(self) -> LoadedData:
        self.require_dir()
        lists = self.read_lists()
        stems = self.caption_stems(lists["allclasses"])
        no_text = [self.expected_caption_file(p, stems) for p in self.orphan_images(stems)]
        out = LoadedData(train=None, eval_sets={}, stats={})
        unassigned = [t for t in no_text if t.parent.name == "*"]
        if unassigned:
            n_files = len(unassigned) + sum(map(len, stems.values()))
            self.apply_missing_rule("all", unassigned, n_files, NO_CLASS_HINT)
            out.missing["all"] = [str(p) for p in unassigned]
        data = {s: self.read_split(s, lists[lst], stems, no_text) for s, lst in self.splits().items()}
        out.train, out.stats["train"] = self.train_set(data["train"])
        out.num_classes = len(data["train"].classes)
        out.train_vocab_texts = [c for it in data["train"].kept() for c in it.captions]
        for split in [s for s in data if s != "train"]:
            out.eval_sets[split], out.stats[split] = self.eval_set(split, data[split])
        for split, d in data.items():
            out.missing[split] = [str(p) for p in d.missing]
            key = "tuning_train" if self.tuning and split == "train" else split
            out.warnings += warn_counts(self.name, split, out.stats[split], self.expected.get(key, {}))
        return out

    def read_split(
        self, split: str, classes: list[str], stems: dict[str, set[str]], no_text: list[Path]
    ) -> ClassSplit:
        """Pair each caption file of the split's classes with its image and apply the missing-file rule."""
        items = []
        for cls in classes:
            for stem in sorted(stems[cls]):
                text = self.captions_root / cls / f"{stem}.txt"
                items.append(
                    Item(
                        cls,
                        self.class_number(cls),
                        self.image_path(cls, stem),
                        text,
                        self.read_captions(split, text),
                    )
                )
        wanted = set(classes)
        absent_text = [t for t in no_text if t.parent.name in wanted]
        missing = find_missing(it.image for it in items) + absent_text
        hint = (
            f"Images belong in {self.base / self.image_dir}/; caption files in {self.captions_root}/<class>/."
        )
        self.apply_missing_rule(split, missing, len(items) + len(absent_text), hint)
        return ClassSplit(classes, items, missing)

    def train_set(self, d: ClassSplit) -> tuple[PairDataset, dict[str, int]]:
        """One sample per (image, caption); label = rank of the class among the sorted training classes."""
        rank = {c: i for i, c in enumerate(sorted(d.classes))}
        kept = d.kept()
        ds = caption_pairs(
            ImageFiles([it.image for it in kept]), [it.captions for it in kept], [rank[it.cls] for it in kept]
        )
        return ds, {**d.counts(), "queries": len(ds), "gallery": 0}

    def eval_set(self, split: str, d: ClassSplit) -> tuple[EvalSet, dict[str, int]]:
        """Queries = every caption (labelled by class; the method pools them per class), gallery = images."""
        kept = d.kept()
        es = caption_eval_set(
            "class_reed",
            ImageFiles([it.image for it in kept]),
            [it.captions for it in kept],
            [it.label for it in kept],
            [f"{it.cls}/{it.text.stem}" for it in kept],  # the caption file, unique per class folder
            label_names={self.class_number(c): c for c in d.classes},  # pooled class queries: the class
            info={
                "dataset": self.name,
                "split": split,
                "classes": list(d.classes),
                "class_labels": [self.class_number(c) for c in d.classes],
                "n_missing": len(d.missing),
            },
        )
        return es, {**d.counts(), "queries": len(es.queries), "gallery": len(kept)}


@register_datamodule("cub")
class CUBDataModule(ReedDataModule):
    """CUB-200-2011 images with Reed et al.'s bird captions (`cvpr2016_cub`)."""

    folder: ClassVar[str] = "CUB"
    text_dir: ClassVar[str] = "cvpr2016_cub"
    image_dir: ClassVar[str] = "CUB_200_2011/images"
    class_pattern: ClassVar[str] = r"(\d{3})\.\S+"
    layout_template: ClassVar[str] = CUB_LAYOUT
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"labels": 150, "images": 8855, "captions": 88550},
        "tuning_train": {"labels": 100},
        "val": {"labels": 50},
        "test": {"labels": 50, "images": 2933, "captions": 29330, "queries": 29330, "gallery": 2933},
    }

    def image_path(self, cls: str, stem: str) -> Path:
        return self.base / self.image_dir / cls / f"{stem}.jpg"

    def orphan_images(self, stems: dict[str, set[str]]) -> list[Path]:
        folder = self.base / self.image_dir
        return [
            p for cls, s in stems.items() for p in sorted((folder / cls).glob("*.jpg")) if p.stem not in s
        ]


@register_datamodule("flowers")
class FlowersDataModule(ReedDataModule):
    """Oxford-102 Flowers images (`102flowers/jpg`, flat) with Reed et al.'s captions (`cvpr2016_flowers`).

    An image in `jpg/` without a caption file belongs to no class; the missing-file rule reports it under
    split "all".
    """

    folder: ClassVar[str] = "Flowers"
    text_dir: ClassVar[str] = "cvpr2016_flowers"
    image_dir: ClassVar[str] = "102flowers/jpg"
    class_pattern: ClassVar[str] = r"class_(\d{5})"
    layout_template: ClassVar[str] = FLOWERS_LAYOUT
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"labels": 82, "images": 7034, "captions": 70340},
        "tuning_train": {"labels": 62},
        "val": {"labels": 20},
        "test": {"labels": 20, "images": 1155, "captions": 11550, "queries": 11550, "gallery": 1155},
    }

    def image_path(self, cls: str, stem: str) -> Path:
        return self.base / self.image_dir / f"{stem}.jpg"

    def orphan_images(self, stems: dict[str, set[str]]) -> list[Path]:
        captioned = set().union(*stems.values())
        return sorted(p for p in (self.base / self.image_dir).glob("*.jpg") if p.stem not in captioned)
