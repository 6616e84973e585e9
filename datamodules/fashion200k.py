"""Fashion200K (Han et al., ICCV'17) with the google/tirg composed-retrieval protocol.

Images and label files from xthan/fashion-200k (`{cat}_{split}_detect_all.txt`: image path, detection score,
description, tab-separated); `test_queries.txt` (source and target image paths) from google/tirg's download
script. Conventions re-implemented from google/tirg's `datasets.py`:
- captions are normalised: strip, then "." -> "dotmark", "?" -> "questionmark", "&" -> "andmark",
  "*" -> "starmark"; captions are compared on the normalised text;
- modification text "replace X with Y": X = first source word absent from the target caption, Y = first
  target word absent from the source caption (TIRG falls back to the last word when there is none);
- training pairs are drawn on the fly: a caption's parents are the caption minus one word, removed as TIRG
  removes it (`str.replace` of every matching substring, one pass folding double spaces, strip); an image is
  modifiable when one of its parents has at least two child captions; its target is an image of another
  child of a random parent (TIRG's rejection sampling);
- evaluation (protocol `f200k`): gallery = every test image, the source excluded; a hit is any retrieved image
  with the target's caption, so labels are caption ids.
Fashion200K has no val split: `val_split` defaults to "test", as in the papers (recorded in `info["split"]`).
Irregular lines of the real files are read as TIRG reads them and reported (`QUIRKS`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from fgbench.data.datasets import (
    ComposedQueryDataset,
    ImageFiles,
    Transform,
    TransformDataset,
    VisualDataset,
)
from fgbench.data.module import EvalSet, LoadedData, RetrievalDataModule
from fgbench.data.query_ids import number_repeats
from fgbench.data.validation import (
    DatasetFormatError,
    QuirkKind,
    find_missing,
    warn_counts,
)
from fgbench.evaluation.spec import EvalSpec
from fgbench.registry import register_datamodule

CATEGORIES = ("dress", "jacket", "pants", "skirt", "top")
LAYOUT = """\
<root>/fashion200k/labels/{dress,jacket,pants,skirt,top}_{train,test}_detect_all.txt
<root>/fashion200k/women/<category>/<subcategory>/<id>/<n>.jpeg
<root>/fashion200k/test_queries.txt
"""
LABEL_FORMAT = "image_path<TAB>detection_score<TAB>description"
MARKS = {".": "dotmark", "?": "questionmark", "&": "andmark", "*": "starmark"}
QUIRKS = (
    QuirkKind(
        "empty_caption",
        "a label line whose description is empty",
        "TIRG keeps the image with an empty caption (no words: never a training source or target)",
        "kept the same way; a test query on such an image stops (TIRG cannot build its text either)",
    ),
    QuirkKind(
        "extra_fields",
        "a label line with more than three tab-separated fields",
        "TIRG takes the description from the third field and ignores the rest",
        "the same",
    ),
    QuirkKind(
        "score_not_a_number",
        "a detection score that is not a number",
        "TIRG stores the score as text and never uses it",
        "kept unread",
    ),
    QuirkKind(
        "duplicate_image",
        "an image path listed on more than one label line of a split",
        "TIRG keeps every line as an image; a test query's path means its last line",
        "the same: each line is a gallery item, queries use the last one",
    ),
    QuirkKind(
        "blank_line",
        "a blank line inside a label file or test_queries.txt",
        "TIRG stops on it (too few fields to unpack)",
        "skipped",
    ),
)


def normalise(description: str) -> str:
    """TIRG's caption post-processing."""
    text = description.strip()
    for mark, word in MARKS.items():
        text = text.replace(mark, word)
    return text


def modification_text(source: str, target: str) -> str:
    """TIRG's "replace X with Y" between two normalised captions."""
    src, tgt = source.split(), target.split()
    x = next((w for w in src if w not in tgt), src[-1])
    y = next((w for w in tgt if w not in src), tgt[-1])
    return f"replace {x} with {y}"


def parents(caption: str) -> list[str]:
    """TIRG's parents: for each word, the caption with every occurrence of that word's text removed (also
    inside longer words), double spaces folded once, stripped (distinct values, in order)."""
    return list(dict.fromkeys(caption.replace(w, "").replace("  ", " ").strip() for w in caption.split()))


@dataclass
class Labelled:
    """The images of one split: relative paths and normalised captions, in label-file order."""

    paths: list[str]
    captions: list[str]


@dataclass
class CaptionIndex:
    """Caption ids (first-appearance order), images per caption, and the parent relation between captions."""

    captions: list[str]
    image_caption: list[int]
    caption_images: list[list[int]]
    children: dict[str, list[int]]  # parent -> caption ids of its children (only parents with >= 2 children)
    caption_parents: list[list[str]]  # caption id -> its parents that have >= 2 children

    @classmethod
    def build(cls, image_captions: list[str]) -> CaptionIndex:
        ids: dict[str, int] = {}
        image_caption = [ids.setdefault(c, len(ids)) for c in image_captions]
        caption_images: list[list[int]] = [[] for _ in ids]
        for i, c in enumerate(image_caption):
            caption_images[c].append(i)
        family: dict[str, list[int]] = defaultdict(list)
        for caption, c in ids.items():
            for p in parents(caption):
                family[p].append(c)
        children = {p: cs for p, cs in family.items() if len(cs) >= 2}
        caption_parents: list[list[str]] = [[] for _ in ids]
        for p, cs in children.items():
            for c in cs:
                caption_parents[c].append(p)
        return cls(list(ids), image_caption, caption_images, children, caption_parents)

    def modifiable(self) -> list[int]:
        """Images whose caption has a parent shared with another caption (the training sources)."""
        return [i for i, c in enumerate(self.image_caption) if self.caption_parents[c]]


class ParentPairDataset(TransformDataset):
    """Training triplets drawn on the fly: item i = the i-th modifiable image and a random one-word-different
    target (TIRG); `target_label` is the target's caption id (same caption = same target)."""

    def __init__(self, store: ImageFiles, index: CaptionIndex, transform: Transform | None = None) -> None:
        super().__init__(transform)
        self.store, self.index = store, index
        self.sources = index.modifiable()

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ix = self.index
        src = self.sources[i]
        c_src = ix.image_caption[src]
        while True:
            c_tgt = random.choice(ix.children[random.choice(ix.caption_parents[c_src])])
            if c_tgt != c_src:
                break
        tgt = random.choice(ix.caption_images[c_tgt])
        item: dict[str, Any] = {
            "index": i,
            "text": modification_text(ix.captions[c_src], ix.captions[c_tgt]),
            "target_label": c_tgt,
        }
        for prefix, image in [("ref_", src), ("tgt_", tgt)]:
            item.update({prefix + k: v for k, v in self.store.get(image, self.transform).items()})
        return item


@register_datamodule("fashion200k")
class Fashion200KDataModule(RetrievalDataModule):
    """Fashion200K: on-the-fly training pairs, TIRG's test queries scored by caption."""

    published_as: ClassVar[str] = "Fashion200K"  # its `dataset` spelling in results/published.csv

    tasks: ClassVar[frozenset[str]] = frozenset({"composed"})
    layout: ClassVar[str] = LAYOUT
    folder: ClassVar[str] = "fashion200k"
    expected: ClassVar[dict[str, dict[str, int | None]]] = {
        "train": {"images": 172049, "captions": 53099, "queries": 106464},
        "test": {"images": 29789, "gallery": 29789, "queries": 33480},
    }
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = QUIRKS

    def __init__(
        self, root: str = "data", val_split: str = "test", test_split: str = "test", **kwargs: Any
    ) -> None:
        super().__init__(root=root, val_split=val_split, test_split=test_split, **kwargs)

    def load(self) -> LoadedData:
        self.require_dir()
        out = LoadedData(train=None, eval_sets={}, stats={})
        self.build_train(self.read_labels("train"), out)
        for split in dict.fromkeys([self.val_split, self.test_split]):
            if split != "test":
                raise ValueError(f"{self.name}: no split {split!r}; Fashion200K is evaluated on 'test'")
            self.build_test(self.read_labels("test"), out)
        for split, stats in out.stats.items():
            out.warnings += warn_counts(self.name, split, stats, self.expected.get(split, {}))
        return out

    def annotation(self, rel: str) -> Path:
        path = self.require_file(self.base / rel)
        return path

    def read_labels(self, split: str) -> Labelled:
        """All five label files of a split, in category order."""
        out = Labelled([], [])
        seen: set[str] = set()
        for cat in CATEGORIES:
            file = self.annotation(f"labels/{cat}_{split}_detect_all.txt")
            for n, line in self.numbered_lines(split, file):
                path, caption = self.parse_label_line(split, line, file, n)
                if path in seen:
                    self.quirk(split, "duplicate_image", file, f"line {n}", "image_path", path)
                seen.add(path)
                out.paths.append(path)
                out.captions.append(caption)
        return out

    def numbered_lines(self, split: str, file: Path) -> list[tuple[int, str]]:
        """The file's non-blank lines with their numbers; a blank line before the last one is a quirk."""
        lines = read_lines(file)
        if lines and not lines[-1].strip():
            lines = lines[:-1]  # the newline that ends the file
        out = []
        for n, line in enumerate(lines, start=1):
            if line.strip():
                out.append((n, line))
            else:
                self.quirk(split, "blank_line", file, f"line {n}", None, line)
        return out

    def parse_label_line(self, split: str, line: str, file: Path, n: int) -> tuple[str, str]:
        """One label line -> (image path, normalised caption), as TIRG splits it on tabs."""
        where = f"line {n}"
        parts = line.split("\t")
        if len(parts) < 3:
            raise DatasetFormatError(
                file, f"{len(parts)} tab-separated field(s)", where=where, expected=LABEL_FORMAT
            )
        if len(parts) > 3:
            self.quirk(split, "extra_fields", file, where, None, parts[3:])
        path, score, description = parts[0].strip(), parts[1].strip(), parts[2]
        if not path:
            raise DatasetFormatError(file, "empty value", where=where, field="image_path")
        try:
            float(score)
        except ValueError:
            self.quirk(split, "score_not_a_number", file, where, "detection_score", score)
        caption = normalise(description)
        if not caption:
            self.quirk(split, "empty_caption", file, where, "description", description)
        return path, caption

    def apply_missing(self, split: str, paths: list[str]) -> set[str]:
        """Apply the missing-file rule to a split's images; return the missing relative paths."""
        files = [self.base / p for p in paths]
        missing = find_missing(files)
        self.apply_missing_rule(split, missing, len(set(files)))
        lost = set(missing)
        return {p for p, f in zip(paths, files, strict=True) if f in lost}

    def present(self, split: str, labels: Labelled) -> tuple[list[str], set[str], CaptionIndex]:
        """Apply the missing-file rule to a split: the kept paths (label-file order), the absent ones and the
        caption index of the kept images."""
        absent = self.apply_missing(split, labels.paths)
        kept = [i for i, p in enumerate(labels.paths) if p not in absent]
        return [labels.paths[i] for i in kept], absent, CaptionIndex.build([labels.captions[i] for i in kept])

    def record_split(
        self,
        out: LoadedData,
        split: str,
        labels: Labelled,
        index: CaptionIndex,
        absent: set[str],
        **served: int,
    ) -> None:
        """A split's missing files and counts; `served` = its queries and gallery."""
        out.missing[split] = sorted(str(self.base / p) for p in absent)
        out.stats[split] = {
            "images": len(labels.paths),
            "captions": len(set(labels.captions)),
            "labels": len(index.captions),
            **served,
            "missing": len(absent),
        }

    def build_train(self, labels: Labelled, out: LoadedData) -> None:
        kept, absent, index = self.present("train", labels)
        train = ParentPairDataset(ImageFiles([self.base / p for p in kept]), index)
        out.train = train
        out.num_classes = len(index.captions)
        out.train_vocab_texts = [*index.captions, "replace with"]  # the template's words are in no caption
        self.record_split(out, "train", labels, index, absent, queries=len(train), gallery=0)

    def build_test(self, labels: Labelled, out: LoadedData) -> None:
        """Gallery = every test image; queries from test_queries.txt; labels = caption ids."""
        gallery, absent, index = self.present("test", labels)
        position = {p: j for j, p in enumerate(gallery)}
        queries = self.read_queries(dict(zip(labels.paths, labels.captions, strict=True)))
        queries = [(s, t) for s, t in queries if s not in absent and t not in absent]
        store = ImageFiles([self.base / p for p in gallery])
        src = [position[s] for s, _ in queries]
        tgt = [position[t] for _, t in queries]
        caption_of = index.image_caption
        spec = EvalSpec(
            protocol="f200k",
            query_labels=torch.tensor([caption_of[j] for j in tgt], dtype=torch.long),
            gallery_labels=torch.tensor(caption_of, dtype=torch.long),
            exclude=torch.tensor(src, dtype=torch.long),
            query_ids=number_repeats(
                [f"{s}>{t}" for s, t in queries], self.base / "test_queries.txt"
            ),  # a repeated line numbered
            info={"dataset": self.name, "split": "test", "n_missing": len(absent)},
        )
        texts = [
            modification_text(index.captions[caption_of[s]], index.captions[caption_of[t]])
            for s, t in zip(src, tgt, strict=True)
        ]
        out.eval_sets["test"] = EvalSet(
            ComposedQueryDataset(store, src, texts), VisualDataset(store), spec, query_kind="composed"
        )
        self.record_split(out, "test", labels, index, absent, queries=len(queries), gallery=len(gallery))

    def read_queries(self, caption_of: dict[str, str]) -> list[tuple[str, str]]:
        """test_queries.txt: "source_path target_path" per line, both among the test images (path -> the
        caption of its last label line, as TIRG maps it), both with a caption to build the text from."""
        file = self.annotation("test_queries.txt")
        out = []
        for n, line in self.numbered_lines("test", file):
            fields = line.split()
            if len(fields) != 2:
                raise DatasetFormatError(
                    file, f"{len(fields)} fields", where=f"line {n}", expected="source and target image paths"
                )
            for key, path in zip(("source", "target"), fields, strict=True):
                if path not in caption_of:
                    raise DatasetFormatError(
                        file, f"{path!r} is not in the test label files", where=f"line {n}", field=key
                    )
                if not caption_of[path]:
                    raise DatasetFormatError(
                        file,
                        f"{path!r} has an empty caption: no modification text can be built",
                        where=f"line {n}",
                        field=key,
                    )
            out.append((fields[0], fields[1]))
        return out


def read_lines(file: Path) -> list[str]:
    """Lines split on newlines only, as TIRG's `readlines` (`splitlines` also splits on Unicode breaks)."""
    try:
        return file.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DatasetFormatError(file, f"not UTF-8 text ({err})", expected="a UTF-8 text file") from None
