"""Task-specific batch dataclasses (docs/architecture.md, "Data flow of one run").

Dataset items are plain dicts (cheap to pickle to loader workers); `collate_*` turn a list of them into
these dataclasses, tokenising captions with the attached processor inside the worker. Every item carries
its dataset `index`, so features gathered from several devices can be de-duplicated and put back in order.

Item dict keys: ``index`` (int), ``text`` (str), ``label`` (int), ``image_index`` (int), and a visual
entry: ``pixels`` (Tensor[3,H,W], with optional ``boxes`` Tensor[n,4] given with the image) or
``regions`` (Tensor[R,D]) + ``boxes`` (Tensor[R,4]); boxes are normalised x1,y1,x2,y2. Composed items
use ``ref_``/``tgt_`` prefixes for the two visual entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from fgbench.data.processor import Processor


@dataclass
class Visual:
    """A batch of images (`pixels`) or of precomputed region features (`regions`, `boxes`)."""

    pixels: Tensor | None = None  # [B,3,H,W]
    regions: Tensor | None = None  # [B,R,D]
    boxes: Tensor | None = None  # [B,R,4] normalised x1,y1,x2,y2
    region_mask: Tensor | None = None  # [B,R] True = valid

    def __len__(self) -> int:
        t = self.pixels if self.pixels is not None else self.regions
        return 0 if t is None else int(t.shape[0])


@dataclass
class Text:
    """Captions as strings, plus the processor's tokenisation when one is attached."""

    raw: list[str]
    input_ids: Tensor | None = None  # [B,L]
    attention_mask: Tensor | None = None  # [B,L]

    def __len__(self) -> int:
        return len(self.raw)


@dataclass
class PairBatch:
    """Training batch of the text-image and image-text tasks: one (image, caption) pair per row."""

    index: Tensor  # Long[B] dataset index of the pair
    text: Text
    visual: Visual
    label: Tensor  # Long[B] identity / class / image id (train labels are contiguous from 0)
    image_index: Tensor  # Long[B] running index of the training image (instance label)


@dataclass
class TripletBatch:
    """Training batch of composed retrieval: (reference image, modification text) -> target image."""

    index: Tensor  # Long[B]
    reference: Visual
    text: Text
    target: Visual
    target_label: Tensor  # Long[B] id of the target image (items with the same target are positives)


@dataclass
class TextBatch:
    """Evaluation queries of text-image retrieval (one caption per row)."""

    index: Tensor
    text: Text


@dataclass
class VisualBatch:
    """Evaluation gallery items (one image or region set per row)."""

    index: Tensor
    visual: Visual


@dataclass
class ComposedQueryBatch:
    """Evaluation queries of composed retrieval."""

    index: Tensor
    reference: Visual
    text: Text


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Recursively move the tensors of a batch dataclass to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if hasattr(batch, "__dataclass_fields__"):
        return type(batch)(**{f.name: move_batch(getattr(batch, f.name), device) for f in fields(batch)})
    return batch


def _stack_visual(items: Sequence[dict[str, Any]], prefix: str = "") -> Visual:
    first = items[0]
    if prefix + "pixels" in first:
        pixels = torch.stack([it[prefix + "pixels"] for it in items])
        if prefix + "boxes" not in first:
            return Visual(pixels=pixels)
        boxes, mask = _pad_boxes([it[prefix + "boxes"] for it in items])
        return Visual(pixels=pixels, boxes=boxes, region_mask=mask)
    if prefix + "regions" in first:
        regs = [it[prefix + "regions"] for it in items]
        n_max = max(r.shape[0] for r in regs)
        dim = regs[0].shape[1]
        out = regs[0].new_zeros(len(regs), n_max, dim)
        boxes = torch.zeros(len(regs), n_max, 4)
        mask = torch.zeros(len(regs), n_max, dtype=torch.bool)
        for i, it in enumerate(items):
            r = it[prefix + "regions"]
            out[i, : r.shape[0]] = r
            b = it.get(prefix + "boxes")
            if b is not None:
                boxes[i, : r.shape[0]] = b
            mask[i, : r.shape[0]] = True
        return Visual(regions=out, boxes=boxes, region_mask=mask)
    raise KeyError(f"dataset item has neither '{prefix}pixels' nor '{prefix}regions': keys {sorted(first)}")


def _pad_boxes(bxs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Boxes of varying count per image -> [B, n_max, 4] and a validity mask."""
    n = max(int(b.shape[0]) for b in bxs)
    boxes = torch.zeros(len(bxs), n, 4)
    mask = torch.zeros(len(bxs), n, dtype=torch.bool)
    for i, b in enumerate(bxs):
        boxes[i, : b.shape[0]] = b
        mask[i, : b.shape[0]] = True
    return boxes, mask


def _text(raw: list[str], processor: Processor | None) -> Text:
    if processor is None:
        return Text(raw=raw)
    tok = processor.tokenize(raw)
    if tok is None:
        return Text(raw=raw)
    return Text(raw=raw, input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))


def _long(items: Sequence[dict[str, Any]], key: str) -> Tensor:
    return torch.tensor([int(it[key]) for it in items], dtype=torch.long)


def collate_pairs(items: Sequence[dict[str, Any]], processor: Processor | None = None) -> PairBatch:
    return PairBatch(
        index=_long(items, "index"),
        text=_text([it["text"] for it in items], processor),
        visual=_stack_visual(items),
        label=_long(items, "label"),
        image_index=_long(items, "image_index"),
    )


def collate_triplets(items: Sequence[dict[str, Any]], processor: Processor | None = None) -> TripletBatch:
    return TripletBatch(
        index=_long(items, "index"),
        reference=_stack_visual(items, "ref_"),
        text=_text([it["text"] for it in items], processor),
        target=_stack_visual(items, "tgt_"),
        target_label=_long(items, "target_label"),
    )


def collate_texts(items: Sequence[dict[str, Any]], processor: Processor | None = None) -> TextBatch:
    return TextBatch(index=_long(items, "index"), text=_text([it["text"] for it in items], processor))


def collate_visuals(items: Sequence[dict[str, Any]], processor: Processor | None = None) -> VisualBatch:
    return VisualBatch(index=_long(items, "index"), visual=_stack_visual(items))


def collate_composed_queries(
    items: Sequence[dict[str, Any]], processor: Processor | None = None
) -> ComposedQueryBatch:
    return ComposedQueryBatch(
        index=_long(items, "index"),
        reference=_stack_visual(items, "ref_"),
        text=_text([it["text"] for it in items], processor),
    )
