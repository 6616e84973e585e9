"""Shared pieces of the image-text matching loaders: the per-split index, visual stores, datasets, EvalSpecs.

Every input (`images`, `precomp`, `butd`) is parsed into a `SplitIndex`: the split's images in file order and
its captions, each caption pointing at its image's position. Everything downstream (the val-caption cut, the
missing-file rule, the training pairs, the EvalSpec) works on that index alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fgbench.data.datasets import PairDataset, TextDataset, Transform, VisualDataset, VisualStore, load_image
from fgbench.data.module import EvalSet
from fgbench.data.query_ids import number_repeats
from fgbench.data.validation import DatasetFormatError, find_missing, handle_missing
from fgbench.evaluation.spec import EvalSpec

NPY_MAGIC = b"\x93NUMPY"


@dataclass
class SplitIndex:
    """One split as read from disk: images in file order, and captions pointing at their image's position."""

    store: VisualStore
    ids: list[int]  # store id of each image; list position = image index within the split (its label)
    files: list[tuple[Path, ...]]  # the files each image needs (stat'ed by the missing-file rule)
    captions: list[str]
    caption_image: list[int]  # image index (within the split) of each caption
    info: dict[str, Any] = field(default_factory=dict)  # what the EvalSpec records about this split
    keys: list[str] = field(default_factory=list)  # stable id of each image (filename, cocoid, file row)

    @property
    def n_images(self) -> int:
        return len(self.ids)

    def subset(self, images: Sequence[int], n_captions: int | None = None) -> SplitIndex:
        """Keep `images` (in this order, re-indexed from 0) and, of the first `n_captions`, their captions."""
        pos = {old: new for new, old in enumerate(images)}
        head = self.caption_image[:n_captions]
        keep = [c for c, i in enumerate(head) if i in pos]
        return replace(
            self,
            ids=[self.ids[i] for i in images],
            files=[self.files[i] for i in images],
            keys=[self.keys[i] for i in images],
            captions=[self.captions[c] for c in keep],
            caption_image=[pos[self.caption_image[c]] for c in keep],
        )

    def head(self, n_captions: int) -> SplitIndex:
        """The first `n_captions` captions and the images they describe (validation convention)."""
        images = sorted(set(self.caption_image[:n_captions]))
        return self.subset(images, n_captions)


def drop_missing(
    dataset: str, split: str, index: SplitIndex, skip_missing: bool
) -> tuple[SplitIndex, list[Path]]:
    """Stat every referenced file; raise, or (skip_missing) drop images lacking one and their captions."""
    paths = [p for fs in index.files for p in fs]
    missing = find_missing(paths)
    handle_missing(dataset, split, missing, len(set(paths)), skip_missing)
    if not missing:
        return index, []
    lost = set(missing)
    return index.subset([i for i, fs in enumerate(index.files) if not lost.intersection(fs)]), missing


def pair_dataset(index: SplitIndex) -> PairDataset:
    """Training pairs: one per caption; label and image_index = the image's position in the split."""
    return PairDataset(
        index.store,
        [index.ids[i] for i in index.caption_image],
        index.captions,
        index.caption_image,
        index.caption_image,
    )


def eval_set(index: SplitIndex, protocol: str, info: dict[str, Any]) -> EvalSet:
    """Loaders: queries = captions, gallery = images. EvalSpec: rows = images, columns = captions.

    The image-text protocols score images x captions, so `query_labels` are the image
    indices 0..N-1 and `gallery_labels` the image index of each caption; the method scores the loaders'
    captions x images and the base method transposes.
    """
    images = number_repeats(
        index.keys, f"{info.get('dataset')} {info.get('split')} images"
    )  # an image listed twice (duplicate_image) numbered
    if len(images) != index.n_images:
        raise ValueError(f"{protocol}: {len(images)} image ids for {index.n_images} images")
    nth = [0] * index.n_images
    captions = []
    for i in index.caption_image:  # caption id: <image id>#<its index among the image's captions>
        captions.append(f"{images[i]}#{nth[i]}")
        nth[i] += 1
    spec = EvalSpec(
        protocol=protocol,
        query_labels=torch.arange(index.n_images),
        gallery_labels=torch.tensor(index.caption_image, dtype=torch.long),
        query_ids=images,
        gallery_names=captions,
        info={**info, **index.info, "orientation": "rows=images", "protocol": protocol},
    )
    return EvalSet(
        queries=TextDataset(index.captions), gallery=VisualDataset(index.store, index.ids), spec=spec
    )


# -- arrays --------------------------------------------------------------------------------------------


def load_npy(path: Path, expected: str, mmap: bool = False) -> np.ndarray:
    """`np.load` without pickles; a bad file names itself and what was expected."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DatasetFormatError(path, f"unreadable .npy ({err})", expected=expected) from None


def read_boxes(path: Path) -> np.ndarray:
    """Bottom-up boxes `(R, 4)` x1, y1, x2, y2 in pixels."""
    boxes = load_npy(path, "an (R, 4) array of x1, y1, x2, y2 in pixels")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DatasetFormatError(path, f"array of shape {boxes.shape}", expected="shape (R, 4)")
    return boxes.astype(np.float32)


def read_feat(path: Path) -> np.ndarray:
    """Bottom-up region features: key "feat" of an .npz, `(R, D)`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "feat" not in npz.files:
                raise DatasetFormatError(path, f"missing array (found {npz.files})", field="feat")
            feat = npz["feat"]
    except (ValueError, OSError, EOFError) as err:
        raise DatasetFormatError(
            path, f"unreadable .npz ({err})", expected='an .npz with key "feat"'
        ) from None
    if feat.ndim != 2:
        raise DatasetFormatError(path, f"array of shape {feat.shape}", field="feat", expected="shape (R, D)")
    return feat.astype(np.float32)


def normalise_boxes(boxes: np.ndarray, width: int, height: int) -> Tensor:
    """Pixel boxes divided by (w, h, w, h): normalised x1, y1, x2, y2 (methods derive the area)."""
    return torch.from_numpy(boxes / np.array([width, height, width, height], dtype=np.float32))


def load_relevances(path: Path, n_captions: int, n_images: int) -> np.memmap:
    """TERAN relevance matrix: headerless float32 despite the `.npy` name, opened as a raw memory map.

    Entry (c, i) = ROUGE-L or SPICE of caption c against the captions of image i.
    """
    size, want = path.stat().st_size, n_captions * n_images * 4
    if size != want:
        with path.open("rb") as f:
            header = f.read(len(NPY_MAGIC)) == NPY_MAGIC
        note = "; it has an .npy header, but TERAN's files are raw memory maps" if header else ""
        raise DatasetFormatError(
            path,
            f"{size} bytes{note}",
            expected=f"{want} bytes = headerless float32 ({n_captions} captions x {n_images} images)",
        )
    return np.memmap(path, dtype=np.float32, mode="r", shape=(n_captions, n_images))


# -- visual stores -------------------------------------------------------------------------------------


class ImageBoxFiles:
    """Raw images plus given bottom-up boxes normalised by the image size: items have `pixels`, `boxes`."""

    def __init__(self, paths: Sequence[Path], box_paths: Sequence[Path]) -> None:
        self.paths, self.box_paths = list(paths), list(box_paths)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int, transform: Transform | None) -> dict[str, Tensor]:
        if transform is None:
            raise RuntimeError("ImageBoxFiles needs an image transform: attach a processor to the DataModule")
        img = load_image(self.paths[i])
        return {"pixels": transform(img), "boxes": normalise_boxes(read_boxes(self.box_paths[i]), *img.size)}


class PrecompStore:
    """SCAN `{split}_ims.npy` (N, R, D), memory-mapped: items have `regions` only (the files carry no boxes).

    The map is opened lazily in each process and never pickled, so loader workers do not copy the array.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            arr = load_npy(self.path, "a float32 array (N, R, D)", mmap=True)
            if arr.ndim != 3:
                raise DatasetFormatError(self.path, f"array of shape {arr.shape}", expected="shape (N, R, D)")
            self._array = arr
        return self._array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def get(self, i: int, transform: Transform | None) -> dict[str, Tensor]:
        return {"regions": torch.from_numpy(np.array(self.array[i], dtype=np.float32))}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_array": None}


class ButdStore:
    """TERAN per-image bottom-up features: `regions` from bu_att/<id>.npz, `boxes` from bu_box/<id>.npy."""

    def __init__(
        self, att_paths: Sequence[Path], box_paths: Sequence[Path], sizes: Sequence[tuple[int, int]]
    ):
        self.att_paths, self.box_paths, self.sizes = list(att_paths), list(box_paths), list(sizes)

    def __len__(self) -> int:
        return len(self.att_paths)

    def get(self, i: int, transform: Transform | None) -> dict[str, Tensor]:
        feat, boxes = read_feat(self.att_paths[i]), read_boxes(self.box_paths[i])
        if len(feat) != len(boxes):
            raise DatasetFormatError(
                self.box_paths[i], f"{len(boxes)} boxes for {len(feat)} regions in {self.att_paths[i]}"
            )
        return {"regions": torch.from_numpy(feat), "boxes": normalise_boxes(boxes, *self.sizes[i])}
