"""Generic map-style datasets over an in-memory index; each item is a dict (see `fgbench.data.batches`).

A *visual store* turns an image id into a visual entry: `ImageFiles` opens a file with PIL (RGB) and applies
the processor's transform; region-feature stores (precomputed features) return `regions` and `boxes`.
A dataset gets its transform at construction or as a configured copy (`with_transform`): the DataModule's
loaders serve copies carrying the processor's transform, and the datasets it loaded are never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

Transform = Callable[[Image.Image], Tensor]


class VisualStore(Protocol):
    """Maps an image id (0..n-1) to a visual entry dict (`pixels`, or `regions` + `boxes`)."""

    def __len__(self) -> int: ...

    def get(self, i: int, transform: Transform | None) -> dict[str, Tensor]: ...


class ImageReadError(OSError):
    """An image file that cannot be read or decoded; the message names the file and PIL's reason."""


def load_image(path: Path) -> Image.Image:
    """Open an image and convert it to RGB (COCO and others contain greyscale images).

    A file that cannot be decoded raises ImageReadError naming it (not PIL's bare traceback): with
    `verify_images=False` a corrupt file is met only here, mid-run.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as err:  # OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ImageReadError(
            f"{path}: cannot decode the image ({type(err).__name__}: {err}); run `python -m fgbench data "
            "check NAME --root ROOT --verify-images` to list every unreadable file, or keep "
            "verify_images=True (the default) so a run finds them before training"
        ) from None


class ImageFiles:
    """Visual store over image files on disk."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, i: int, transform: Transform | None) -> dict[str, Tensor]:
        if transform is None:
            raise RuntimeError("ImageFiles needs an image transform: attach a processor to the DataModule")
        return {"pixels": transform(load_image(self.paths[i]))}


class TransformDataset(Dataset):
    """A dataset whose visual entries go through an image transform, given at construction or as a copy."""

    def __init__(self, transform: Transform | None = None) -> None:
        self.transform = transform

    def with_transform(self, transform: Transform | None) -> Self:
        """A shallow copy (the index lists are shared) that applies `transform`; this dataset is unchanged."""
        view = copy.copy(self)
        view.transform = transform
        return view


def _prefixed(d: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in d.items()}


class PairDataset(TransformDataset):
    """(image, caption) training pairs: text-image and image-text tasks."""

    def __init__(
        self,
        store: VisualStore,
        image_ids: Sequence[int],
        captions: Sequence[str],
        labels: Sequence[int],
        image_index: Sequence[int],
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        if not (len(image_ids) == len(captions) == len(labels) == len(image_index)):
            raise ValueError("PairDataset: image_ids, captions, labels and image_index differ in length")
        self.store, self.image_ids, self.captions = store, list(image_ids), list(captions)
        self.labels, self.image_index = list(labels), list(image_index)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "index": i,
            "text": self.captions[i],
            "label": self.labels[i],
            "image_index": self.image_index[i],
        }
        item.update(self.store.get(self.image_ids[i], self.transform))
        return item


def caption_pairs(
    store: VisualStore, captions: Sequence[Sequence[str]], labels: Sequence[int]
) -> PairDataset:
    """Training pairs, one per (image, caption), image by image: image n is the store's item n, and each of
    its pairs carries `labels[n]` and image_index n (person retrieval, Reed et al.'s CUB and Flowers)."""
    pairs = [(n, c) for n, caps in enumerate(captions) for c in caps]
    return PairDataset(
        store,
        image_ids=[n for n, _ in pairs],
        captions=[c for _, c in pairs],
        labels=[labels[n] for n, _ in pairs],
        image_index=[n for n, _ in pairs],
    )


class TextDataset(TransformDataset):
    """Caption queries for evaluation."""

    def __init__(self, captions: Sequence[str]) -> None:
        super().__init__()
        self.captions = list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, "text": self.captions[i]}


class VisualDataset(TransformDataset):
    """Gallery items for evaluation: the store's items `ids` in order."""

    def __init__(
        self, store: VisualStore, ids: Sequence[int] | None = None, transform: Transform | None = None
    ) -> None:
        super().__init__(transform)
        self.store = store
        self.ids = list(range(len(store))) if ids is None else list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"index": i, **self.store.get(self.ids[i], self.transform)}


class TripletDataset(TransformDataset):
    """(reference, text, target) training triplets of composed retrieval."""

    def __init__(
        self,
        store: VisualStore,
        ref_ids: Sequence[int],
        texts: Sequence[str] | Sequence[Callable[[], str]],
        tgt_ids: Sequence[int],
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        if not (len(ref_ids) == len(texts) == len(tgt_ids)):
            raise ValueError("TripletDataset: ref_ids, texts and tgt_ids differ in length")
        self.store, self.ref_ids, self.texts, self.tgt_ids = store, list(ref_ids), list(texts), list(tgt_ids)

    def __len__(self) -> int:
        return len(self.ref_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        text = self.texts[i]
        item: dict[str, Any] = {
            "index": i,
            "text": text() if callable(text) else text,
            "target_label": self.tgt_ids[i],
        }
        item.update(_prefixed(self.store.get(self.ref_ids[i], self.transform), "ref_"))
        item.update(_prefixed(self.store.get(self.tgt_ids[i], self.transform), "tgt_"))
        return item


class ComposedQueryDataset(TransformDataset):
    """(reference, text) evaluation queries of composed retrieval."""

    def __init__(
        self,
        store: VisualStore,
        ref_ids: Sequence[int],
        texts: Sequence[str],
        transform: Transform | None = None,
    ) -> None:
        super().__init__(transform)
        if len(ref_ids) != len(texts):
            raise ValueError("ComposedQueryDataset: ref_ids and texts differ in length")
        self.store, self.ref_ids, self.texts = store, list(ref_ids), list(texts)

    def __len__(self) -> int:
        return len(self.ref_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "index": i,
            "text": self.texts[i],
            **_prefixed(self.store.get(self.ref_ids[i], self.transform), "ref_"),
        }
