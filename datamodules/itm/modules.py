"""The Flickr30K and COCO DataModules (`f30k`, `coco`): one pipeline over three inputs (package doc)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from fgbench.data.datasets import ImageFiles, VisualStore
from fgbench.data.module import LoadedData, RetrievalDataModule
from fgbench.data.validation import DatasetError, DatasetFormatError, QuirkKind, warn_counts
from fgbench.registry import register_datamodule

from .common import (
    ButdStore,
    ImageBoxFiles,
    PrecompStore,
    SplitIndex,
    drop_missing,
    eval_set,
    load_relevances,
    pair_dataset,
)
from .readers import KARPATHY_SPLITS as KNOWN_SPLITS
from .readers import (
    KarpathyImage,
    caption_mapping,
    caption_quirks,
    count_quirk,
    flickr_sizes,
    read_annotation_ids,
    read_coco_captions,
    read_ids,
    read_karpathy,
    read_lines,
    select_captions,
)

log = logging.getLogger("fgbench.data")

FEATURE_SOURCES = ("images", "precomp", "butd")
CAPTION_POLICIES = ("first5", "all")
EVAL_SPLITS = ("val", "test")
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
RELEVANCE_METRICS = ("rougeL", "spice")
Counts = dict[str, dict[str, int | None]]

F30K_LAYOUT = """\
images:  <root>/{folder}/dataset_flickr30k.json
         <root>/{folder}/flickr30k-images/<filename>
         <root>/{folder}/features_36/bu_box/<index in images[]>.npy      (with_boxes=True)
precomp: <root>/f30k_precomp/{{train,dev,test}}_ims.npy  {{split}}_caps.txt  {{split}}_ids.txt
butd:    <root>/{folder}/annotations/dataset_flickr30k.json
         <root>/{folder}/images/<filename>          (or images/sizes.json; or sizes.pkl + trust_sizes_pkl)
         <root>/{folder}/features_36/bu_att/<index in images[]>.npz   bu_box/<index in images[]>.npy
         <root>/{folder}/relevances/f30k-{{val,test}}-{{rougeL,spice}}.npy   (optional)
"""
COCO_LAYOUT = """\
images:  <root>/{folder}/dataset_coco.json
         <root>/{folder}/{{train2014,val2014}}/<filename>
         <root>/{folder}/features_36/bu_box/<cocoid>.npy                 (with_boxes=True)
precomp: <root>/coco_precomp/{{train,dev,testall}}_ims.npy  {{split}}_caps.txt  {{split}}_ids.txt
butd:    <root>/{folder}/annotations/captions_{{train,val}}2014.json
         <root>/{folder}/annotations/coco_{{train,dev,test,restval}}_ids.npy
         <root>/{folder}/features_36/bu_att/<image_id>.npz   bu_box/<image_id>.npy
         <root>/{folder}/relevances/coco-{{val,test}}-{{rougeL,spice}}.npy   (optional)
"""
# The irregular entries of the released files, read as the reference loaders read them: fartashf/vsepp and
# mesnico/TERAN `data.py` (Karpathy JSON, COCO captions JSON + id files), kuanghuei/SCAN `data.py` (precomp).
ITM_QUIRKS = (
    QuirkKind(
        "raw_whitespace",
        "a caption with leading or trailing whitespace or newline (Karpathy `raw`, COCO `caption`, precomp "
        "line)",
        "VSE++ and TERAN hand it to their tokenisers, which ignore it; SCAN strips each precomp line",
        "stripped",
    ),
    QuirkKind(
        "empty_caption",
        "an empty or whitespace-only caption",
        "kept: tokenised to the start and end tokens only (VSE++, SCAN) or [CLS] [SEP] (TERAN)",
        "kept as an empty caption (a query without words)",
    ),
    QuirkKind(
        "non_ascii_caption",
        "a caption containing non-ASCII characters",
        "kept as written",
        "kept as written",
    ),
    QuirkKind(
        "more_than_5_captions",
        "an image with more than five captions (COCO: a few have 6 or 7)",
        "the id files of VSE++, SCAN and TERAN hold five per image; VSE++'s Karpathy-JSON loader keeps all",
        "caption_policy first5 (default) keeps the first five, all keeps every one",
    ),
    QuirkKind(
        "fewer_than_5_captions",
        "an image with fewer than five captions (at least one)",
        "kept: VSE++ and TERAN enumerate the captions an image has",
        "kept with the captions it has",
    ),
    QuirkKind(
        "no_captions",
        "an image with no caption",
        "never seen: VSE++ and TERAN enumerate captions, so no item points at it",
        "skipped (it would be a gallery image without any positive)",
    ),
    QuirkKind(
        "duplicate_image",
        "an image listed twice in a split (same file name or COCO id)",
        "both entries kept as separate images",
        "both kept as separate images",
    ),
    QuirkKind(
        "unknown_split",
        "a Karpathy entry whose split is none of train, val, test, restval",
        "in no split: VSE++ and TERAN select entries by split name",
        "in no split (reported under split 'all')",
    ),
    QuirkKind(
        "duplicate_caption_id",
        "a caption-annotation id listed twice in a TERAN/VSE++ coco_*_ids.npy",
        "both positions kept as captions",
        "both kept",
    ),
    QuirkKind(
        "ids_mismatch",
        "a precomp `_ids.txt` that is absent, has a non-integer line, or does not list one id per image",
        "SCAN never reads the ids file",
        "ignored: the row order of `_ims.npy` is the image order, as in SCAN",
    ),
    QuirkKind(
        "trailing_blank_lines",
        "blank lines after the last caption of a precomp `_caps.txt` (beyond 5 or 1 per image)",
        "SCAN keeps them as captions of an image past the end of `_ims.npy` (an index error if reached)",
        "dropped",
    ),
)
COCO_TEST_SUBSET = (
    "coco_precomp/test_* is one 1,000-image subset of the Karpathy test split, not the 1K protocol: COCO 1K "
    "(five folds) and 5K are both computed from testall_* (the default, precomp_test_file=None). Pass "
    "force=True to evaluate on test_* anyway (not comparable with the papers)."
)


class ITMDataModule(RetrievalDataModule):
    """Image-text matching on Flickr30K or COCO from Karpathy JSON + images, SCAN precomp or TERAN butd.

    Subclasses set the class attributes; a dataset in the Flickr30K Karpathy layout under another folder
    (synth-scenes) subclasses `Flickr30KDataModule` overriding only `name`, `folder` and `expected`.
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"text-image", "image-text"})
    quirk_kinds: ClassVar[tuple[QuirkKind, ...]] = ITM_QUIRKS
    layout_template: ClassVar[str] = F30K_LAYOUT  # formatted with `folder` into `layout`
    karpathy_json: ClassVar[str] = "dataset_flickr30k.json"
    coco_fields: ClassVar[bool] = False  # Karpathy entries carry filepath + cocoid
    precomp_folder: ClassVar[str] = "f30k_precomp"
    precomp_test_default: ClassVar[str] = "test"
    relevance_prefix: ClassVar[str] = "f30k"
    test_protocols: ClassVar[tuple[str, ...]] = ("f30k_1k",)
    # Expected counts of the `precomp` files (keyed by file split) and of `butd` (keyed by split); `expected`
    # is the Karpathy (`images`) table; with caption_policy="all" only `expected_all_captions` is compared.
    expected_precomp: ClassVar[Counts] = {}
    expected_butd: ClassVar[Counts] = {}
    expected_all_captions: ClassVar[dict[str, int | None]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Subclasses that override `folder` get the layout of their own folder in error messages."""
        super().__init_subclass__(**kwargs)
        if "layout" not in cls.__dict__:
            cls.layout = cls.layout_template.format(folder=cls.folder)

    def __init__(
        self,
        root: str = "data",
        feature_source: str = "images",
        caption_policy: str = "first5",
        with_boxes: bool = False,
        val_captions: int | None = 5000,
        precomp_test_file: str | None = None,
        force: bool = False,
        trust_sizes_pkl: bool = False,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            feature_source: `images` (Karpathy JSON + raw images), `precomp` (SCAN) or `butd` (TERAN).
            caption_policy: `first5` (default) or `all` captions per image (Karpathy JSON, TERAN ids).
            with_boxes: `images` only: also serve the bottom-up boxes of `features_36/bu_box`.
            val_captions: validate on the first this many val captions and their images (None = all).
            precomp_test_file: the precomp file split of `test` (default: `testall` COCO, `test` F30K).
            force: allow COCO precomp `test_*` (one 1K subset) as the test split.
            trust_sizes_pkl: convert TERAN's Flickr30K `sizes.pkl` (a pickle) to the JSON size cache.
        """
        super().__init__(root=root, **kwargs)
        self.feature_source, self.caption_policy, self.with_boxes = feature_source, caption_policy, with_boxes
        self.val_captions, self.precomp_test_file = val_captions, precomp_test_file
        self.force, self.trust_sizes_pkl = force, trust_sizes_pkl
        self.test_protocol = self.test_protocols[0]
        self.check_options()

    def check_options(self) -> None:
        for value, allowed, what in [
            (self.feature_source, FEATURE_SOURCES, "feature_source"),
            (self.caption_policy, CAPTION_POLICIES, "caption_policy"),
            (self.val_split, EVAL_SPLITS, "val_split"),
            (self.test_split, EVAL_SPLITS, "test_split"),
            (self.test_protocol, self.test_protocols, "the test protocol"),
        ]:
            if value not in allowed:
                raise ValueError(f"{self.name}: {what} {value!r} is not one of {', '.join(allowed)}")
        if self.with_boxes and self.feature_source != "images":
            raise ValueError(
                f"{self.name}: with_boxes is for feature_source='images' (butd always has boxes)"
            )
        if self.feature_source == "precomp" and self.caption_policy != "first5":
            raise ValueError(f"{self.name}: SCAN precomp files hold five captions per image; use first5")

    # -- pipeline -------------------------------------------------------------------------------------
    def load(self) -> LoadedData:
        reader = {"images": self.read_images, "precomp": self.read_precomp, "butd": self.read_butd}
        splits = reader[self.feature_source](["train", *dict.fromkeys([self.val_split, self.test_split])])
        out = LoadedData(train=None, eval_sets={}, stats={})
        for split, full in splits.items():
            index = full.head(self.val_captions) if split == "val" and self.val_captions else full
            index, missing = drop_missing(self.name, split, index, self.skip_missing)
            out.missing[split] = [str(p) for p in missing]
            out.stats[split] = {
                "images": full.n_images,
                "captions": len(full.captions),
                "labels": index.n_images,
                "queries": len(index.captions),
                "gallery": 0 if split == "train" else index.n_images,
                "missing": len(missing),
            }
            out.warnings += warn_counts(self.name, split, out.stats[split], self.expected_counts(split, full))
            if split == "train":
                out.train, out.num_classes, out.train_vocab_texts = (
                    pair_dataset(index),
                    index.n_images,
                    index.captions,
                )
            else:
                out.eval_sets[split] = eval_set(
                    index, self.protocol(split), self.spec_info(split, index, missing)
                )
        return out

    def protocol(self, split: str) -> str:
        """Test: the dataset's protocol; val: one f30k_1k-style fold (whatever the dataset)."""
        return self.test_protocol if split == "test" else "f30k_1k"

    def spec_info(self, split: str, index: SplitIndex, missing: list[Path]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "dataset": self.name,
            "split": split,
            "feature_source": self.feature_source,
            "caption_policy": self.caption_policy,
            "boxes": self.feature_source == "butd" or self.with_boxes,
            "n_missing": len(missing),
        }
        if split == "val":
            info["val_captions"] = self.val_captions
        if self.feature_source == "butd":
            info.update(self.relevance_info(split, index, dropped=bool(missing)))
        return info

    def expected_counts(self, split: str, index: SplitIndex) -> dict[str, int | None]:
        table = {"images": self.expected, "precomp": self.expected_precomp, "butd": self.expected_butd}
        key = index.info.get("file_split", split)
        counts = dict(table[self.feature_source].get(key, {}))
        if self.caption_policy == "all":
            counts["captions"] = self.expected_all_captions.get(split)
        return counts

    def require_file(self, path: Path, hint: str | None = None) -> Path:
        """The dataset folder, then the file: a missing one raises with the expected layout."""
        self.require_dir(
            self.root / (self.precomp_folder if self.feature_source == "precomp" else self.folder)
        )
        return super().require_file(path, hint)

    # -- images: Karpathy JSON + raw images -----------------------------------------------------------
    def read_images(self, splits: list[str]) -> dict[str, SplitIndex]:
        file = self.require_file(self.base / self.karpathy_json)
        images = read_karpathy(file, self.name, self.coco_fields)
        return {s: self.karpathy_index(self.karpathy_split(s, file, images)) for s in splits}

    def karpathy_split(self, split: str, file: Path, images: list[KarpathyImage]) -> list[KarpathyImage]:
        """The entries of a split in file order, their quirks reported; images without captions skipped."""
        if split == "train":  # entries of no split, reported once
            for im in images:
                if im.split not in KNOWN_SPLITS:
                    self.quirk("all", "unknown_split", file, f"images[{im.index}]", "split", im.split)
        chosen, seen = [], set()
        for im in (im for im in images if im.split in KARPATHY_SPLITS[split]):
            where = f"images[{im.index}]"
            for kind, at, field, value in im.quirks:
                self.quirk(split, kind, file, at, field, value)
            key = self.feature_id(im) if self.coco_fields else im.filename
            if key in seen:
                self.quirk(
                    split, "duplicate_image", file, where, "cocoid" if self.coco_fields else "filename", key
                )
            seen.add(key)
            kind = count_quirk(len(im.captions))
            if kind:
                self.quirk(split, kind, file, where, "sentences", len(im.captions))
            if im.captions:
                chosen.append(im)
        return chosen

    def image_path(self, im: KarpathyImage) -> Path:
        return self.base / "flickr30k-images" / im.filename

    def feature_id(self, im: KarpathyImage) -> int:
        """The bottom-up feature file id: Flickr30K's index in images[]."""
        return im.index

    def feature_path(self, kind: str, feature_id: int) -> Path:
        ext = {"bu_att": "npz", "bu_box": "npy"}[kind]
        return self.base / "features_36" / kind / f"{feature_id}.{ext}"

    def karpathy_index(self, images: list[KarpathyImage]) -> SplitIndex:
        paths = [self.image_path(im) for im in images]
        captions = [select_captions(im.captions, self.caption_policy) for im in images]
        keys = [self.image_key(im) for im in images]
        if self.with_boxes:
            boxes = [self.feature_path("bu_box", self.feature_id(im)) for im in images]
            files = list(zip(paths, boxes, strict=True))
            return split_index(ImageBoxFiles(paths, boxes), files, captions, keys)
        return split_index(ImageFiles(paths), [(p,) for p in paths], captions, keys)

    def image_key(self, im: KarpathyImage) -> str:
        """The image's stable id in per-query outcomes: Flickr30K its filename (COCO: its cocoid)."""
        return im.filename

    # -- precomp: SCAN files --------------------------------------------------------------------------
    def precomp_file(self, split: str) -> str:
        """The file split: train, dev (val), and for test `precomp_test_file` or the dataset's default."""
        return (
            {"train": "train", "val": "dev"}.get(split) or self.precomp_test_file or self.precomp_test_default
        )

    def precomp_hint(self, file_split: str) -> str | None:
        return None

    def read_precomp(self, splits: list[str]) -> dict[str, SplitIndex]:
        return {s: self.precomp_index(s, self.precomp_file(s)) for s in splits}

    def precomp_index(self, split: str, name: str) -> SplitIndex:
        """SCAN's files of one split: features memory-mapped, captions as SCAN reads them (stripped lines)."""
        folder, hint = self.root / self.precomp_folder, self.precomp_hint(name)
        ims, caps = (self.require_file(folder / f"{name}_{x}", hint) for x in ("ims.npy", "caps.txt"))
        store = PrecompStore(ims)
        n, lines = len(store), read_lines(caps)
        while len(lines) not in (n, 5 * n) and lines and not lines[-1].strip():
            lines.pop()
            self.quirk(split, "trailing_blank_lines", caps, f"line {len(lines) + 1}", None, "")
        for k, line in enumerate(lines, 1):
            for kind, at, field, value in caption_quirks(line, f"line {k}", None):
                self.quirk(split, kind, caps, at, field, value)
        captions = [line.strip() for line in lines]
        self.check_precomp_ids(split, folder / f"{name}_ids.txt", n)
        owner = caption_mapping(caps, len(captions), ims, n)
        info = {"file_split": name, "precomp_files": str(folder / f"{name}_*")}
        keys = [
            f"{name}:{i}" for i in range(n)
        ]  # SCAN's files carry no reliable id: the row of {name}_ims.npy
        return SplitIndex(store, list(range(n)), [() for _ in range(n)], captions, owner, info, keys)

    def check_precomp_ids(self, split: str, path: Path, n_images: int) -> None:
        """SCAN never reads `_ids.txt`: one that is absent or does not list one id per image is a quirk."""
        ids = read_ids(path) if path.is_file() else None
        if ids is None or len(ids) != n_images:
            found = "absent" if not path.is_file() else "not integers" if ids is None else f"{len(ids)} lines"
            self.quirk(split, "ids_mismatch", path, "whole file", None, f"{found} for {n_images} images")

    # -- butd: TERAN per-image bottom-up features -----------------------------------------------------
    def read_butd(self, splits: list[str]) -> dict[str, SplitIndex]:
        """Flickr30K: Karpathy JSON under annotations/, sizes from images/ (cached), features by index."""
        file = self.require_file(self.base / "annotations" / self.karpathy_json)
        images = read_karpathy(file, self.name, self.coco_fields)
        images_dir = self.base / "images"
        sizes = flickr_sizes(images_dir, [im.filename for im in images], self.trust_sizes_pkl, self.name)
        out = {}
        for split in splits:
            chosen = self.karpathy_split(split, file, images)
            unsized = [() if im.filename in sizes else (images_dir / im.filename,) for im in chosen]
            out[split] = self.butd_index(
                [self.feature_id(im) for im in chosen],
                [sizes.get(im.filename, (0, 0)) for im in chosen],  # (0, 0): no size; dropped as missing
                [select_captions(im.captions, self.caption_policy) for im in chosen],
                unsized,
                [self.image_key(im) for im in chosen],
            )
        return out

    def butd_index(
        self,
        feature_ids: list[int],
        sizes: list[tuple[int, int]],
        captions: list[list[str]],
        extra_files: list[tuple[Path, ...]],
        keys: list[str],
    ) -> SplitIndex:
        att = [self.feature_path("bu_att", f) for f in feature_ids]
        box = [self.feature_path("bu_box", f) for f in feature_ids]
        files = [(a, b, *e) for a, b, e in zip(att, box, extra_files, strict=True)]
        return split_index(ButdStore(att, box, sizes), files, captions, keys)

    def relevance_info(self, split: str, index: SplitIndex, dropped: bool) -> dict[str, Any]:
        """Optional TERAN relevance matrices of the split (checked against its caption and image counts)."""
        paths = {
            m: self.base / "relevances" / f"{self.relevance_prefix}-{split}-{m}.npy"
            for m in RELEVANCE_METRICS
        }
        present = {m: p for m, p in paths.items() if p.is_file()}
        if not present:
            return {}
        if dropped:
            log.warning(
                "%s [%s]: relevances not used: skip_missing dropped items they index", self.name, split
            )
            return {}
        for p in present.values():
            load_relevances(p, len(index.captions), index.n_images)
        return {"relevances": {m: str(p) for m, p in present.items()}}


def split_index(
    store: VisualStore, files: list[tuple[Path, ...]], captions: list[list[str]], keys: list[str]
) -> SplitIndex:
    """A SplitIndex from per-image caption lists (image-major caption order) and the images' stable ids."""
    flat = [c for caps in captions for c in caps]
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    return SplitIndex(store, list(range(len(files))), files, flat, owner, keys=keys)


@register_datamodule("f30k")
class Flickr30KDataModule(ITMDataModule):
    """Flickr30K: Karpathy splits (29K / 1,014 / 1K images); test protocol `f30k_1k` (no folds)."""

    published_as: ClassVar[str] = "Flickr30K"  # its `dataset` spelling in results/published.csv

    folder: ClassVar[str] = "Flickr30K"
    expected: ClassVar[Counts] = {
        "train": {"images": 29000, "captions": 145000},
        "val": {"images": 1014, "captions": 5070},
        "test": {"images": 1000, "captions": 5000},
    }
    expected_precomp: ClassVar[Counts] = {
        "train": {"images": 29000, "captions": 145000},
        "dev": {"images": 1014, "captions": 5070},
        "test": {"images": 1000, "captions": 5000},
    }
    expected_butd: ClassVar[Counts] = expected


@register_datamodule("coco")
class COCODataModule(ITMDataModule):
    """MS-COCO: Karpathy splits (113,287 with restval / 5K / 5K); test `coco_5k` or `coco_1k_5fold`."""

    published_as: ClassVar[str] = "MS-COCO"  # its `dataset` spelling in results/published.csv

    folder: ClassVar[str] = "COCO"
    layout_template: ClassVar[str] = COCO_LAYOUT
    karpathy_json: ClassVar[str] = "dataset_coco.json"
    coco_fields: ClassVar[bool] = True
    precomp_folder: ClassVar[str] = "coco_precomp"
    precomp_test_default: ClassVar[str] = "testall"
    relevance_prefix: ClassVar[str] = "coco"
    test_protocols: ClassVar[tuple[str, ...]] = ("coco_5k", "coco_1k_5fold")
    expected: ClassVar[Counts] = {
        "train": {"images": 113287, "captions": 566435},
        "val": {"images": 5000, "captions": 25000},
        "test": {"images": 5000, "captions": 25000},
    }
    expected_all_captions: ClassVar[dict[str, int | None]] = {"test": 25010}
    expected_precomp: ClassVar[Counts] = {
        "train": {"images": 113287, "captions": 566435},
        "dev": {"images": 5000, "captions": 25000},
        "test": {"images": 1000, "captions": 5000},
        "testall": {"images": 5000, "captions": 25000},
    }
    expected_butd: ClassVar[Counts] = expected
    BUTD_IDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("train", "restval"),
        "val": ("dev",),
        "test": ("test",),
    }

    def __init__(self, root: str = "data", coco_protocol: str = "coco_5k", **kwargs: Any) -> None:
        """`coco_protocol`: `coco_5k` (default) or `coco_1k_5fold` (folds of 1,000 images in file order)."""
        super().__init__(root=root, **kwargs)
        self.test_protocol = coco_protocol
        self.check_options()

    def image_path(self, im: KarpathyImage) -> Path:
        return self.base / im.filepath / im.filename

    def feature_id(self, im: KarpathyImage) -> int:
        """The bottom-up feature file id: the COCO image id."""
        return im.cocoid

    def image_key(self, im: KarpathyImage) -> str:
        return str(im.cocoid)

    def precomp_file(self, split: str) -> str:
        name = super().precomp_file(split)
        if split == "test" and name == "test" and not self.force:
            raise DatasetError(f"{self.name}: {COCO_TEST_SUBSET}")
        return name

    def precomp_hint(self, file_split: str) -> str | None:
        folder = self.root / self.precomp_folder
        if file_split == "testall" and (folder / "test_ims.npy").is_file():
            return f"Found test_ims.npy but no testall_*. {COCO_TEST_SUBSET}"
        return None

    def spec_info(self, split: str, index: SplitIndex, missing: list[Path]) -> dict[str, Any]:
        info = super().spec_info(split, index, missing)
        if split == "test" and self.feature_source == "precomp" and index.info.get("file_split") == "test":
            info["forced_test_subset"] = True
        return info

    def read_butd(self, splits: list[str]) -> dict[str, SplitIndex]:
        """COCO: captions and sizes from captions_{train,val}2014.json, splits from TERAN's id files."""
        ann_dir = self.base / "annotations"
        coco = read_coco_captions(
            [self.require_file(ann_dir / f"captions_{s}2014.json") for s in ("train", "val")], self.name
        )
        out = {}
        for split in splits:
            by_image: dict[int, list[str]] = {}  # image order = first appearance in the id files
            first: dict[int, str] = {}  # image id -> where its first caption is listed
            seen: set[int] = set()
            for name in self.BUTD_IDS[split]:
                file = self.require_file(ann_dir / f"coco_{name}_ids.npy")
                for pos, ann_id in enumerate(read_annotation_ids(file)):
                    where = f"position {pos}"
                    if ann_id in seen:
                        self.quirk(split, "duplicate_caption_id", file, where, None, ann_id)
                    seen.add(ann_id)
                    image_id, caption = self.coco_caption(coco.captions, coco.sizes, ann_id, file, pos)
                    for kind, _, _, value in caption_quirks(caption, where, "caption"):
                        self.quirk(split, kind, file, f"{where} (caption id {ann_id})", "caption", value)
                    by_image.setdefault(image_id, []).append(caption.strip())
                    first.setdefault(image_id, f"{file.name}, {where}")
            for image_id, caps in by_image.items():
                kind = count_quirk(len(caps))
                if kind:
                    self.quirk(split, kind, ann_dir, f"image {image_id} ({first[image_id]})", None, len(caps))
            ids = list(by_image)
            out[split] = self.butd_index(
                ids,
                [coco.sizes[i] for i in ids],
                [select_captions(by_image[i], self.caption_policy) for i in ids],
                [() for _ in ids],
                [str(i) for i in ids],
            )
        return out

    @staticmethod
    def coco_caption(
        captions: dict[int, tuple[int, str]],
        sizes: dict[int, tuple[int, int]],
        ann_id: int,
        file: Path,
        pos: int,
    ) -> tuple[int, str]:
        if ann_id not in captions:
            raise DatasetFormatError(
                file,
                f"caption id {ann_id} is not in captions_{{train,val}}2014.json",
                where=f"position {pos}",
            )
        image_id, caption = captions[ann_id]
        if image_id not in sizes:
            raise DatasetFormatError(
                file,
                f"caption id {ann_id}: image {image_id} is not in images[] of the captions JSONs",
                where=f"position {pos}",
            )
        return image_id, caption
