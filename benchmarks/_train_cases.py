"""The training benchmark's cases (`train_throughput.py`): each method at its paper size and at the tiny
`--quick` size, as a factory of freshly built models, the DataModule they were built against and a factory
of synthetic training batches. A case is registered under the method's registry name in `CASES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _fakes import Checkpoints, Registry, bench_datamodule, captions, method_class


@dataclass
class Ctx:
    """What every case builder gets."""

    quick: bool
    device: torch.device
    batch_size: int | None  # None: the case's own (paper batch, or the quick one)
    ckpt: Checkpoints


@dataclass
class Case:
    """One method at one size: a factory of freshly built models (same seed, same weights), the DataModule
    they were built against, and a factory of synthetic training batches (needs a built model's processor)."""

    new_model: Callable[[], Any]
    dm: Any
    make_batch: Callable[[Any, int], Any]  # (built model, seed) -> a CPU batch
    batch_size: int
    profile: str
    note: str = ""


CASES: Registry[Callable[[Ctx], Case]] = Registry("method")


def _built(cls: type, dm: Any, **kwargs: Any) -> Callable[[], Any]:
    def new() -> Any:
        torch.manual_seed(0)
        model = cls(**kwargs)
        model.build(dm.info())
        dm.set_processor(model.processor)
        return model

    return new


def _profile(ctx: Ctx, weights: str, checkpoint: str) -> dict[str, Any]:
    """The method's profile, and at paper size its random checkpoint under the keyword `weights`."""
    if ctx.quick:
        return {"profile": "tiny"}
    return {"profile": "paper", weights: str(ctx.ckpt.get(checkpoint))}


def _text(model: Any, n: int, seed: int) -> Any:
    from fgbench.data.batches import Text

    raw = captions(n, seed)
    tok = model.processor.tokenize(raw)
    return Text(raw=raw, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])


def _images(model: Any, n: int, g: torch.Generator) -> Any:
    """`n` random images at the size the model's processor makes."""
    from fgbench.data.batches import Visual

    return Visual(pixels=torch.randn(n, 3, *model.processor.image_size, generator=g))


def person_case(name: str, ctx: Ctx, **extra: Any) -> Case:
    """A person method (CLIP towers): paper = ViT-B/16 at 384x128, L = 77, batch 64, CUHK-PEDES' 11,003
    training identities; quick = the tiny profile at 64x32, batch 8."""
    from fgbench.data.batches import PairBatch

    cls = method_class(name)  # first: an unregistered method is skipped before any checkpoint is written
    dm = bench_datamodule(frozenset({"text-image"}), 64 if ctx.quick else 11003, (64, 32))
    kwargs = {**_profile(ctx, "clip_path", "clip"), **extra}
    b = ctx.batch_size or (8 if ctx.quick else 64)

    def make_batch(model: Any, seed: int) -> PairBatch:
        g = torch.Generator().manual_seed(seed)
        return PairBatch(
            index=torch.arange(b),
            text=_text(model, b, seed),
            visual=_images(model, b, g),
            label=torch.arange(b) // 2,  # two pairs per identity, as a PK sampler gives
            image_index=torch.arange(b),
        )

    return Case(_built(cls, dm, **kwargs), dm, make_batch, b, kwargs["profile"])


@CASES.register("clip_ft")
def _clip_ft(ctx: Ctx) -> Case:
    return person_case("clip_ft", ctx)


@CASES.register("irra")
def _irra(ctx: Ctx) -> Case:
    return person_case("irra", ctx)


@CASES.register("mmref")
def _mmref(ctx: Ctx) -> Case:
    case = person_case("mmref", ctx, ref_init="normal")
    case.note = "ref_init=normal (the class-mean pass at fit start is not a step)"
    return case


def region_case(name: str, ctx: Ctx, paper_batch: int, **extra: Any) -> Case:
    """A region method (TERAN, RACG): paper = 36 bottom-up regions x 2048 with boxes and BERT-6 captions
    padded to the profile's length; quick = the tiny profile on 36 regions x 64, batch 8."""
    from fgbench.data.batches import PairBatch, Visual

    cls = method_class(name)
    width = 64 if ctx.quick else 2048
    dm = bench_datamodule(frozenset({"text-image", "image-text"}), 0, (32, 32), "butd", width)
    kwargs = {**_profile(ctx, "bert_path", "bert"), **extra}
    b = ctx.batch_size or (8 if ctx.quick else paper_batch)

    def make_batch(model: Any, seed: int) -> PairBatch:
        g = torch.Generator().manual_seed(seed)
        xy = torch.rand(b, 36, 2, generator=g) * 0.7
        wh = 0.05 + torch.rand(b, 36, 2, generator=g) * 0.25
        return PairBatch(
            index=torch.arange(b),
            text=_text(model, b, seed),
            visual=Visual(
                regions=torch.rand(b, 36, width, generator=g),  # bottom-up features are non-negative
                boxes=torch.cat([xy, xy + wh], dim=-1),
                region_mask=torch.ones(b, 36, dtype=torch.bool),
            ),
            label=torch.arange(b),
            image_index=torch.arange(b),
        )

    return Case(_built(cls, dm, **kwargs), dm, make_batch, b, kwargs["profile"])


@CASES.register("teran")
def _teran(ctx: Ctx) -> Case:
    return region_case("teran", ctx, paper_batch=40)


@CASES.register("racg")
def _racg(ctx: Ctx) -> Case:
    return region_case("racg", ctx, paper_batch=64)


@CASES.register("nsfse")
def _nsfse(ctx: Ctx) -> Case:
    """NSFSE: paper = ResNet-50 at 224x224 (random weights through `weights_path`), BiGRU over 300-d words,
    batch 32 triplets (two images each); quick = the tiny profile at 32x32, batch 8."""
    from fgbench.data.batches import TripletBatch

    cls = method_class("nsfse")
    dm = bench_datamodule(frozenset({"composed"}), 0, (32, 32))
    kwargs = _profile(ctx, "weights_path", "resnet50")
    b = ctx.batch_size or (8 if ctx.quick else 32)

    def make_batch(model: Any, seed: int) -> TripletBatch:
        g = torch.Generator().manual_seed(seed)
        reference = _images(model, b, g)
        return TripletBatch(
            index=torch.arange(b),
            reference=reference,
            text=_text(model, b, seed),
            target=_images(model, b, g),
            target_label=torch.arange(b),
        )

    note = "a sample is a triplet (2 images)"
    return Case(_built(cls, dm, **kwargs), dm, make_batch, b, kwargs["profile"], note)
