"""Training throughput of the suite's methods: the Lightning step against a bare PyTorch loop (issue 11).

For each method at its paper size (person methods: CLIP ViT-B/16 at 384x128, L = 77, batch 64; TERAN and
RACG: 36 regions x 2048 + BERT-6, batch 40 (COCO); NSFSE: ResNet-50 at 224 + BiGRU, batch 32), on synthetic
tensors, bf16 autocast on a GPU (fp32 on the CPU), with and without `torch.compile`:

- **suite**: the method's `training_step` inside a Lightning `Trainer.fit` (logger, progress bar and
  checkpointing off; `fgbench.speed.SpeedOptions` compiles the towers), fed by a DataLoader of ready batches
  already on the device, timed by a callback over the steady-state steps;
- **bare**: the same LightningModule in a plain loop: `losses(batch)` weighted and summed under the same
  autocast, `backward`, the method's gradient clipping, `optimizer.step`, `scheduler.step`, with the optimiser
  and schedule the method configures, on the same batches.

`suite/bare` is the ratio of their times per step, measured in the same run (median of `--rounds`
alternating rounds). FLOPs per step are counted once with `torch.utils.flop_counter.FlopCounterMode` on a
bare step (matmuls, convolutions and attention kernels, forward and backward; element-wise work is not
counted); MFU = FLOPs per step / suite time per step / the measured matrix rate of the device (a bf16
8192^3 matmul on a GPU; on the CPU an fp32 one, so the CPU MFU is against the fp32 rate).

Host-device synchronisations are found by `SyncProbe`, a dispatch mode that records every op that makes the
host wait for a GPU (`.item()`/`float()`/`bool()` of a tensor, `nonzero`/boolean-mask indexing,
`masked_select`, `pack_padded_sequence`'s host lengths, `unique`, device-to-host copies), with the line
that issued it. It runs on one warm-up step of the suite (the whole Lightning loop iteration) and one bare
step, so it works on the CPU too; on a GPU `torch.cuda.set_sync_debug_mode` counts the real ones as well.

No pretrained weights are needed: paper-size random CLIP and BERT checkpoints (and ResNet-50 weights) are
written to a temp folder and loaded through the methods' own loaders. A method that is not importable or
not registered (e.g. `racg` before it exists) is a "skipped: <why>" row, not a crash.

    .venv/bin/python benchmarks/train_throughput.py                   # paper sizes (a GPU; else --quick)
    .venv/bin/python benchmarks/train_throughput.py --quick           # tiny profiles on the CPU, seconds
    .venv/bin/python benchmarks/train_throughput.py --only irra,teran --compile off
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _bench import (
    RESULTS,
    ROOT,
    PeakMemory,
    device_label,
    fmt,
    loadavg,
    log,
    matmul_rate,
    out_csv,
    pick_device,
    render,
    sync,
    versions,
    write_csv,
)
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

OUT_CSV = RESULTS / "train_throughput.csv"
METHOD_NAMES = ("clip_ft", "irra", "mmref", "teran", "racg", "nsfse")
COMPILE_BACKENDS = ("off", "inductor", "eager", "aot_eager")
GOAL_OVERHEAD = 1.05  # suite time per step <= 5% above the bare loop's

# -- synthetic captions --------------------------------------------------------------------------------

_WORDS = {
    "who": ["a woman", "a man", "a young girl", "an old man", "a person", "a tall woman"],
    "colour": ["red", "blue", "black", "white", "grey", "green", "yellow", "dark", "light", "striped"],
    "top": ["shirt", "jacket", "coat", "t-shirt", "sweater", "hoodie", "blouse", "dress"],
    "bottom": ["jeans", "trousers", "shorts", "skirt", "pants", "leggings"],
    "thing": ["bag", "backpack", "umbrella", "phone", "bottle", "box", "hat", "scarf"],
    "verb": ["walking", "standing", "carrying", "holding", "looking at", "riding"],
}


def caption(rng: random.Random) -> str:
    """A person-style caption of 12-30 words (the length range of CUHK-PEDES captions)."""
    w = {k: (lambda k=k: rng.choice(_WORDS[k])) for k in _WORDS}
    parts = [f"{w['who']()} wearing a {w['colour']()} {w['top']()} and {w['colour']()} {w['bottom']()}"]
    for _ in range(rng.randint(0, 3)):
        parts.append(f"{w['verb']()} a {w['colour']()} {w['thing']()}")
    return " , ".join(parts) + " ."


def captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [caption(rng) for _ in range(n)]


# -- a DataModule with only what `build` reads ---------------------------------------------------------


def bench_datamodule(
    tasks: frozenset[str],
    num_classes: int,
    image_size: tuple[int, int],
    feature_source: str = "images",
    region_dim: int = 0,
) -> Any:
    """A RetrievalDataModule for `build` (tasks, training captions, identities, region width) whose
    training loader serves `dm.ready`, a list of ready batches (already on the device)."""
    from torch.utils.data import DataLoader

    from fgbench.data.module import LoadedData, RetrievalDataModule

    class BenchData(RetrievalDataModule):
        name = "bench"

        def __init__(self) -> None:
            super().__init__(root=tempfile.gettempdir())
            self.tasks = tasks  # type: ignore[misc]
            self.tiny_image_size = image_size  # type: ignore[misc]
            self.feature_source = feature_source
            self.with_boxes = feature_source == "butd"
            self.ready: list[Any] = []

        def load(self) -> LoadedData:
            items = [{"regions": torch.zeros(36, region_dim)}] if region_dim else []
            return LoadedData(
                train=items,  # type: ignore[arg-type]
                eval_sets={},
                stats={},
                num_classes=num_classes,
                train_vocab_texts=captions(512, seed=1),
            )

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.ready, batch_size=None, shuffle=False, collate_fn=lambda b: b)

    return BenchData()


# -- paper-size random checkpoints ---------------------------------------------------------------------

CLIP_VOCAB = 49408  # CLIP's BPE vocabulary; SOT/EOT are its last two ids
BERT_VOCAB = 30522  # bert-base-uncased


def save_random_clip(path: Path) -> Path:
    """A random CLIP ViT-B/16 (vision 768 x 12 layers, patch 16; text 512 x 12 layers, 49,408 tokens,
    projection 512) and a byte-level tokenizer of the real vocabulary size (fillers instead of merges)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars)]
    vocab += [f"fill{i}</w>" for i in range(CLIP_VOCAB - 2 - len(vocab))]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    CLIPTokenizer(vocab={w: i for i, w in enumerate(vocab)}, merges=[]).save_pretrained(path)
    text = dict(
        vocab_size=CLIP_VOCAB,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        max_position_embeddings=77,
        bos_token_id=CLIP_VOCAB - 2,
        eos_token_id=CLIP_VOCAB - 1,
    )
    vision = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).save_pretrained(path)
    return path


def save_random_bert(path: Path) -> Path:
    """A random bert-base-sized BERT cut to 6 layers (TERAN loads only those) and a word-piece tokenizer of
    the real vocabulary size (the synthetic captions' words, then fillers)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for c in captions(512, seed=1) for w in c.replace("-", " - ").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", *words]
    vocab += [f"[fill{i}]" for i in range(BERT_VOCAB - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=BERT_VOCAB,
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(path)
    return path


def save_random_resnet50(path: Path) -> Path:
    """Random ResNet-50 weights (timm, no classifier) in a safetensors file, for NSFSE's `weights_path`."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False, num_classes=0)
    file = path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    return file


class Checkpoints:
    """Paper-size random checkpoints, written once per run into a temp folder on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def get(self, kind: str) -> Path:
        if kind not in self._made:
            writer = {"clip": save_random_clip, "bert": save_random_bert, "resnet50": save_random_resnet50}
            folder = self.root / kind
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            self._made[kind] = writer[kind](folder)
            log(f"  wrote a random paper-size {kind} checkpoint in {time.perf_counter() - t0:.1f} s")
        return self._made[kind]


# -- benchmark cases -----------------------------------------------------------------------------------


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


CASES: dict[str, Callable[[Ctx], Case]] = {}


def register_case(name: str) -> Callable[[Callable[[Ctx], Case]], Callable[[Ctx], Case]]:
    def deco(fn: Callable[[Ctx], Case]) -> Callable[[Ctx], Case]:
        CASES[name] = fn
        return fn

    return deco


def method_class(name: str) -> type:
    """The registered class, or an exception saying why not (reported as a skipped row)."""
    from fgbench.registry import METHODS

    return METHODS.get(name)


def _built(cls: type, dm: Any, **kwargs: Any) -> Callable[[], Any]:
    def new() -> Any:
        torch.manual_seed(0)
        model = cls(**kwargs)
        model.build(dm)
        dm.set_processor(model.processor)
        return model

    return new


def _text(model: Any, n: int, seed: int) -> Any:
    from fgbench.data.batches import Text

    raw = captions(n, seed)
    tok = model.processor.tokenize(raw)
    return Text(raw=raw, input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])


def _pixels(n: int, size: tuple[int, int], g: torch.Generator) -> Tensor:
    return torch.randn(n, 3, *size, generator=g)


def person_case(name: str, ctx: Ctx, **extra: Any) -> Case:
    """A person method (CLIP towers): paper = ViT-B/16 at 384x128, L = 77, batch 64, CUHK-PEDES' 11,003
    training identities; quick = the tiny profile at 64x32, batch 8."""
    from fgbench.data.batches import PairBatch, Visual

    cls = method_class(name)
    quick = ctx.quick
    dm = bench_datamodule(frozenset({"text-image"}), 64 if quick else 11003, (64, 32))
    kwargs: dict[str, Any] = {"profile": "tiny" if quick else "paper", **extra}
    if not quick:
        kwargs["clip_path"] = str(ctx.ckpt.get("clip"))
    b = ctx.batch_size or (8 if quick else 64)

    def make_batch(model: Any, seed: int) -> PairBatch:
        g = torch.Generator().manual_seed(seed)
        size = model.processor.image_size
        return PairBatch(
            index=torch.arange(b),
            text=_text(model, b, seed),
            visual=Visual(pixels=_pixels(b, size, g)),
            label=torch.arange(b) // 2,  # two pairs per identity, as a PK sampler gives
            image_index=torch.arange(b),
        )

    return Case(_built(cls, dm, **kwargs), dm, make_batch, b, kwargs["profile"])


@register_case("clip_ft")
def _clip_ft(ctx: Ctx) -> Case:
    return person_case("clip_ft", ctx)


@register_case("irra")
def _irra(ctx: Ctx) -> Case:
    return person_case("irra", ctx)


@register_case("mmref")
def _mmref(ctx: Ctx) -> Case:
    case = person_case("mmref", ctx, ref_init="normal")
    case.note = "ref_init=normal (the class-mean pass at fit start is not a step)"
    return case


def region_case(name: str, ctx: Ctx, paper_batch: int, **extra: Any) -> Case:
    """A region method (TERAN, RACG): paper = 36 bottom-up regions x 2048 with boxes and BERT-6 captions
    padded to the profile's length; quick = the tiny profile on 36 regions x 64, batch 8."""
    from fgbench.data.batches import PairBatch, Visual

    cls = method_class(name)
    quick = ctx.quick
    width = 64 if quick else 2048
    dm = bench_datamodule(frozenset({"text-image", "image-text"}), 0, (32, 32), "butd", width)
    kwargs: dict[str, Any] = {"profile": "tiny" if quick else "paper", **extra}
    if not quick:
        kwargs["bert_path"] = str(ctx.ckpt.get("bert"))
    b = ctx.batch_size or (8 if quick else paper_batch)

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


@register_case("teran")
def _teran(ctx: Ctx) -> Case:
    return region_case("teran", ctx, paper_batch=40)


@register_case("racg")
def _racg(ctx: Ctx) -> Case:
    return region_case("racg", ctx, paper_batch=64)


@register_case("nsfse")
def _nsfse(ctx: Ctx) -> Case:
    """NSFSE: paper = ResNet-50 at 224x224 (random weights through `weights_path`), BiGRU over 300-d words,
    batch 32 triplets (two images each); quick = the tiny profile at 32x32, batch 8."""
    from fgbench.data.batches import TripletBatch, Visual

    cls = method_class("nsfse")
    quick = ctx.quick
    dm = bench_datamodule(frozenset({"composed"}), 0, (32, 32))
    kwargs: dict[str, Any] = {"profile": "tiny" if quick else "paper"}
    if not quick:
        kwargs["weights_path"] = str(ctx.ckpt.get("resnet50"))
    b = ctx.batch_size or (8 if quick else 32)

    def make_batch(model: Any, seed: int) -> TripletBatch:
        g = torch.Generator().manual_seed(seed)
        size = model.processor.image_size
        return TripletBatch(
            index=torch.arange(b),
            reference=Visual(pixels=_pixels(b, size, g)),
            text=_text(model, b, seed),
            target=Visual(pixels=_pixels(b, size, g)),
            target_label=torch.arange(b),
        )

    case = Case(_built(cls, dm, **kwargs), dm, make_batch, b, kwargs["profile"])
    case.note = "a sample is a triplet (2 images)"
    return case


# -- host-device synchronisation probe -----------------------------------------------------------------

_aten = torch.ops.aten
# ops whose CUDA implementation makes the host wait for the device
SYNC_OPS: dict[Any, str] = {
    _aten._local_scalar_dense.default: "item()/float()/bool() of a tensor",
    _aten.nonzero.default: "nonzero",
    _aten.masked_select.default: "masked_select",
    _aten._pack_padded_sequence.default: "pack_padded_sequence (host lengths)",
    _aten._unique2.default: "unique",
    _aten.unique_consecutive.default: "unique_consecutive",
    _aten.unique_dim.default: "unique",
    _aten.repeat_interleave.Tensor: "repeat_interleave without output_size",
    _aten.equal.default: "torch.equal",
}
# indexing ops that sync when an index is a boolean mask (its nonzero is taken inside the kernel)
INDEX_OPS = {
    _aten.index.Tensor,
    _aten.index_put.default,
    _aten.index_put_.default,
    _aten._index_put_impl_.default,
}
_HERE = str(ROOT)


# host-side work that only looks like a sync on a CPU run: Adam/AdamW keep their step counters on the host
# (unless capturable/fused), an RNN reads PackedSequence.batch_sizes (host by contract), and
# pack_padded_sequence works on host lengths once they were copied (the copy is `_pack_padded_sequence`)
HOST_SIDE = ("/torch/optim/", "/torch/nn/utils/rnn.py", "/torch/nn/modules/rnn.py")
# torch's own plumbing between a Python caller and the op (never the caller that decides to sync)
PLUMBING = (
    "/torch/_tensor.py",
    "/torch/overrides.py",
    "/torch/utils/_python_dispatch.py",
    "/torch/_ops.py",
    "/torch/_compile.py",
    "/torch/_dynamo/",
)


def _short(path: str, line: int) -> str:
    if path.startswith(_HERE) and "/.venv/" not in path:
        return f"{Path(path).relative_to(_HERE)}:{line}"
    return f"{path.split('site-packages/')[-1]}:{line}"


def _site(func: Any) -> str | None:
    """Where a syncing op comes from: the innermost calling frame (a library's, e.g. transformers') and the
    innermost frame of the repository or Lightning; None when that innermost frame is host-side torch code
    (HOST_SIDE), which never waits for a GPU."""
    stack = [fr for fr in traceback.extract_stack() if fr.filename != __file__]
    callers = [fr for fr in stack if not any(p in fr.filename for p in PLUMBING)]
    if not callers:
        return "?"
    inner = callers[-1]
    if func is not _aten._pack_padded_sequence.default and any(h in inner.filename for h in HOST_SIDE):
        return None
    ours = next(
        (
            fr
            for fr in reversed(callers)
            if (fr.filename.startswith(_HERE) and "/.venv/" not in fr.filename)
            or "/lightning/" in fr.filename
        ),
        None,
    )
    if ours is None:
        return _short(inner.filename, inner.lineno or 0)
    if ours is inner:
        return _short(ours.filename, ours.lineno or 0)
    return f"{_short(inner.filename, inner.lineno or 0)} via {_short(ours.filename, ours.lineno or 0)}"


class SyncProbe(TorchDispatchMode):
    """Counts the ops of a section that force a host-device synchronisation on a GPU, by call site."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        why = SYNC_OPS.get(func)
        if why is None and func in INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            if any(isinstance(t, Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices or []):
                why = "boolean-mask indexing"
        if why is None and func is _aten._to_copy.default and isinstance(args[0], Tensor):
            dev = kwargs.get("device")
            if args[0].device.type == "cuda" and dev is not None and torch.device(dev).type == "cpu":
                why = "device-to-host copy"
        site = _site(func) if why is not None else None
        if site is not None:
            self.found[f"{why} @ {site}"] += 1
        return func(*args, **kwargs)

    @property
    def count(self) -> int:
        return sum(self.found.values())


@contextlib.contextmanager
def cuda_sync_debug(device: torch.device, record: list[str]) -> Iterator[None]:
    """On a GPU, CUDA's own count of synchronising calls in the section (`set_sync_debug_mode("warn")`)."""
    if device.type != "cuda":
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    record.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))


# -- the two loops -------------------------------------------------------------------------------------


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU (Lightning's `bf16-mixed`), nothing on the CPU (`32-true`)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def grad_clip(model: Any) -> float:
    """The gradient-norm clip a method applies in `configure_gradient_clipping` (TERAN: 2.0), else 0."""
    hp = getattr(model, "hp", None)
    return (
        float(getattr(hp, "grad_clip", 0.0) or 0.0)
        if "configure_gradient_clipping" in vars(type(model))
        else 0.0
    )


def bare_optimizer(model: Any, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and schedule `configure_optimizers` builds, without a Trainer."""
    from fgbench.optim import build_optimizer, build_scheduler, param_groups

    opt = build_optimizer(param_groups(model, model.optim_cfg), model.optim_cfg)
    return opt, build_scheduler(opt, model.optim_cfg, total_steps, total_steps)


def bare_step(model: Any, opt: torch.optim.Optimizer, sched: Any, batch: Any, device: torch.device) -> None:
    """One plain-PyTorch training step of the LightningModule."""
    opt.zero_grad(set_to_none=True)
    with autocast(device):
        terms = model.losses(batch)
        total = sum(model.loss_weights.get(k, 1.0) * v for k, v in terms.items())
    total.backward()
    clip = grad_clip(model)
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()


@dataclass
class Run:
    """One timed run of a loop."""

    seconds_per_step: float
    peak_mb: float | None
    syncs: Counter[str] = field(default_factory=Counter)
    cuda_syncs: list[str] = field(default_factory=list)


def run_bare(
    model: Any, batches: list[Any], warmup: int, steps: int, device: torch.device, probe: bool
) -> Run:
    model.to(device).train()
    peak = PeakMemory(device).start()
    opt, sched = bare_optimizer(model, warmup + steps)
    probe_mode, cuda_found = SyncProbe(), []
    for i in range(warmup):
        if probe and i == warmup - 1:
            with cuda_sync_debug(device, cuda_found), probe_mode:
                bare_step(model, opt, sched, batches[i % len(batches)], device)
        else:
            bare_step(model, opt, sched, batches[i % len(batches)], device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        bare_step(model, opt, sched, batches[(warmup + i) % len(batches)], device)
    sync(device)
    seconds = (time.perf_counter() - t0) / steps
    mb = peak.stop()
    del opt, sched
    return Run(seconds, mb, probe_mode.found if probe else Counter(), cuda_found)


def _lightning_callbacks() -> tuple[type, type]:
    """(StepTimer, ProbeStep) Lightning callbacks, defined on first use (Lightning imports in seconds)."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Wall time from the end of the last warm-up step to the end of the last step (device synced)."""

        def __init__(self, device: torch.device, warmup: int, total: int) -> None:
            self.device, self.warmup, self.total = device, warmup, total
            self.t0 = self.t1 = 0.0

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int) -> None:
            if i == self.warmup - 1:
                sync(self.device)
                self.t0 = time.perf_counter()
            if i == self.total - 1:
                sync(self.device)
                self.t1 = time.perf_counter()

    class ProbeStep(Callback):
        """`SyncProbe` over one whole loop iteration: from batch `step`'s start to the next batch's start
        (the step, the optimiser, Lightning's logging and hooks, the next fetch)."""

        def __init__(self, device: torch.device, step: int) -> None:
            self.device, self.step = device, step
            self.probe = SyncProbe()
            self.cuda_found: list[str] = []
            self._stack: contextlib.ExitStack | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, i: int) -> None:
            if i == self.step:
                self._stack = contextlib.ExitStack()
                self._stack.enter_context(cuda_sync_debug(self.device, self.cuda_found))
                self._stack.enter_context(self.probe)
            elif i == self.step + 1:
                self._close()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._close()

        def _close(self) -> None:
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    return StepTimer, ProbeStep


def run_suite(
    model: Any,
    dm: Any,
    batches: list[Any],
    warmup: int,
    steps: int,
    device: torch.device,
    probe: bool,
    compile_backend: str,
) -> Run:
    import lightning as L

    from fgbench.speed import SpeedOptions

    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning sets INFO when it is imported
        logging.getLogger(name).setLevel(logging.ERROR)

    StepTimer, ProbeStep = _lightning_callbacks()
    total = warmup + steps
    dm.ready = [batches[i % len(batches)] for i in range(total)]
    timer = StepTimer(device, warmup, total)
    callbacks: list[Any] = [timer]
    if not getattr(model, "speed_options", {}).get("compiled_modules"):  # compiled once, in the first run
        callbacks.append(SpeedOptions(channels_last="off", compile=compile_backend))
    prober = ProbeStep(device, warmup - 2) if probe else None
    if prober is not None:
        callbacks.append(prober)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        max_epochs=1,
        limit_train_batches=total,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    peak = PeakMemory(device).start()
    trainer.fit(model, datamodule=dm)
    mb = peak.stop()
    if timer.t1 <= timer.t0:
        raise RuntimeError(f"the timer saw no steady-state steps ({total} batches, warm-up {warmup})")
    found = prober.probe.found if prober is not None else Counter()
    return Run((timer.t1 - timer.t0) / steps, mb, found, prober.cuda_found if prober else [])


# -- FLOPs ---------------------------------------------------------------------------------------------


def count_flops(model: Any, batch: Any, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward) as FlopCounterMode counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    model.to(device).train()
    opt, sched = bare_optimizer(model, 1)
    with FlopCounterMode(display=False) as counter:
        bare_step(model, opt, sched, batch, device)
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# -- one method ----------------------------------------------------------------------------------------


@dataclass
class Row:
    """One method x compile setting."""

    method: str
    compile: str
    profile: str = ""
    batch: int = 0
    suite_s: float | None = None
    bare_s: float | None = None
    suite_mb: float | None = None
    bare_mb: float | None = None
    flops: int | None = None
    suite_syncs: int | None = None
    bare_syncs: int | None = None
    status: str = "ok"
    note: str = ""
    sync_sites: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return self.suite_s / self.bare_s if self.suite_s and self.bare_s else None


def measure(name: str, ctx: Ctx, args: argparse.Namespace, rate: float) -> list[Row]:
    """Every compile setting of one method (eager always; compiled unless --compile off)."""
    compiled = args.compile != "off" and (args.compile_methods == "all" or name in args.compile_methods)
    backends = ["off"] + ([args.compile] if compiled else [])
    try:
        case = CASES[name](ctx)
    except Exception as err:  # not registered / not importable / cannot build: a skipped row, not a crash
        why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:160]
        return [Row(name, b, status="skipped", note=why) for b in backends]
    rows = []
    for backend in backends:
        row = Row(name, backend, case.profile, case.batch_size, note=case.note)
        try:
            _measure_one(case, ctx, args, backend, row)
        except Exception as err:
            traceback.print_exc()
            row.status, row.note = "failed", f"{type(err).__name__}: {str(err).splitlines()[0]}"[:200]
        rows.append(row)
        log(
            f"[{name}/{backend}] {row.status}: suite {fmt(row.suite_s and 1e3 * row.suite_s, '.1f')} ms, "
            f"bare {fmt(row.bare_s and 1e3 * row.bare_s, '.1f')} ms, ratio {fmt(row.ratio, '.3f')} {row.note}"
        )
    return rows


def _measure_one(case: Case, ctx: Ctx, args: argparse.Namespace, backend: str, row: Row) -> None:
    t0 = time.perf_counter()
    model = case.new_model()
    batches = [move(case.make_batch(model, seed), ctx.device) for seed in range(args.distinct_batches)]
    log(f"[{row.method}/{backend}] built in {time.perf_counter() - t0:.1f} s; batch {case.batch_size}")
    eager = backend == "off"
    if eager:
        row.flops = count_flops(model, batches[0], ctx.device)
    suite, bare = [], []
    for r in range(args.rounds):
        probe = eager and r == 0
        s = run_suite(model, case.dm, batches, args.warmup, args.steps, ctx.device, probe, backend)
        b = run_bare(model, batches, args.warmup, args.steps, ctx.device, probe)
        suite.append(s)
        bare.append(b)
        if probe:
            row.suite_syncs, row.bare_syncs = s.syncs.total(), b.syncs.total()
            row.sync_sites = [f"suite: {k} x{v}" for k, v in s.syncs.items()]
            row.sync_sites += [f"bare: {k} x{v}" for k, v in b.syncs.items()]
            row.sync_sites += [f"suite (CUDA debug): {m}" for m in s.cuda_syncs]
            row.sync_sites += [f"bare (CUDA debug): {m}" for m in b.cuda_syncs]
    row.suite_s = statistics.median(x.seconds_per_step for x in suite)
    row.bare_s = statistics.median(x.seconds_per_step for x in bare)
    row.suite_mb = _max(x.peak_mb for x in suite)
    row.bare_mb = _max(x.peak_mb for x in bare)
    if not eager:
        row.flops = None
    del model, batches
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _max(values: Iterator[float | None] | Any) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def move(batch: Any, device: torch.device) -> Any:
    from fgbench.data.batches import move_batch

    return move_batch(batch, device)


# -- table ---------------------------------------------------------------------------------------------


def display(rows: list[Row], rate: float, flops_by_method: dict[str, int]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        flops = r.flops if r.flops is not None else flops_by_method.get(r.method)
        mfu = flops / r.suite_s / rate if flops and r.suite_s else None
        note = r.note if r.status == "ok" else f"{r.status}: {r.note}"
        out.append(
            {
                "method": r.method,
                "profile": r.profile or "-",
                "batch": str(r.batch) if r.batch else "-",
                "compile": r.compile,
                "suite ms/step": fmt(r.suite_s and 1e3 * r.suite_s, ".1f"),
                "bare ms/step": fmt(r.bare_s and 1e3 * r.bare_s, ".1f"),
                "suite/bare": fmt(r.ratio, ".3f"),
                "samples/s": fmt(r.batch / r.suite_s if r.suite_s else None, ".1f"),
                "peak MB suite": fmt(r.suite_mb, ".0f"),
                "peak MB bare": fmt(r.bare_mb, ".0f"),
                "GFLOP/step": fmt(flops and flops / 1e9, ".1f"),
                "MFU %": fmt(mfu and 100 * mfu, ".1f"),
                "syncs/step suite": fmt(r.suite_syncs, "d"),
                "syncs/step bare": fmt(r.bare_syncs, "d"),
                "note": note,
            }
        )
    return out


RIGHT = {
    "batch",
    "suite ms/step",
    "bare ms/step",
    "suite/bare",
    "samples/s",
    "peak MB suite",
    "peak MB bare",
    "GFLOP/step",
    "MFU %",
    "syncs/step suite",
    "syncs/step bare",
}


def goals(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        if r.status != "ok" or r.ratio is None:
            continue
        met = r.ratio <= GOAL_OVERHEAD
        out.append(
            f"goal {r.method}/{r.compile}: suite/bare {r.ratio:.3f} (goal <= {GOAL_OVERHEAD}): "
            f"{'MET' if met else 'NOT MET'}"
        )
        if r.suite_syncs is not None:
            out.append(
                f"goal {r.method}: host-device syncs in one suite loop iteration {r.suite_syncs} "
                f"(bare step {r.bare_syncs}; goal 0): {'MET' if r.suite_syncs == 0 else 'NOT MET'}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny profiles, few steps (the fast test)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(METHOD_NAMES)}")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1 ...")
    p.add_argument("--compile", default=None, choices=COMPILE_BACKENDS, help="backend of the compiled rows")
    p.add_argument(
        "--compile-methods",
        default=None,
        help="comma-separated methods that get compiled rows, or all (default: all; --quick: clip_ft)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="override every case's batch size")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per run (>= 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=None, help="alternating suite/bare rounds (median)")
    p.add_argument("--distinct-batches", type=int, default=4, help="different synthetic batches cycled")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV path (default results/train_throughput.csv; --quick: results/quick/)",
    )
    args = p.parse_args(argv)
    # decided by the flag asked for: without a GPU a plain run falls back to the quick sizes below and
    # still writes the tracked table (its `quick` column says so), as `make bench` does on a CPU host
    args.out = out_csv(args.out, args.quick, OUT_CSV.stem)
    if not args.quick and args.device == "auto" and not torch.cuda.is_available():
        print("no GPU: running the --quick sizes (the paper sizes need a GPU; --device cpu forces them)")
        args.quick = True
    args.warmup = args.warmup or (3 if args.quick else 5)
    args.steps = args.steps or (3 if args.quick else 20)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.compile = args.compile or ("eager" if args.quick else "inductor")
    args.compile_methods = args.compile_methods or ("clip_ft" if args.quick else "all")
    if args.compile_methods != "all":
        args.compile_methods = tuple(args.compile_methods.split(","))
    if args.warmup < 2:
        p.error("--warmup must be >= 2 (the sync probe runs on a warm-up step)")
    names = METHOD_NAMES if args.only is None else tuple(args.only.split(","))
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        p.error(f"--only: unknown method(s) {unknown}; known: {', '.join(CASES)}")

    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    device = pick_device(args.device)
    torch.manual_seed(0)
    rate, rate_desc = matmul_rate(device, args.quick)
    print(f"device: {device_label(device)}; {versions()}")
    print(f"matrix rate (MFU denominator): {rate_desc}; load average at start {loadavg()}")
    compiled = args.compile_methods if args.compile_methods == "all" else ",".join(args.compile_methods)
    print(
        f"warm-up {args.warmup}, timed steps {args.steps}, rounds {args.rounds}, compiled rows: "
        f"{args.compile} ({compiled}); "
        f"{'quick (tiny profiles)' if args.quick else 'paper profiles'}",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fgbench-train-bench-") as tmp:
        ctx = Ctx(args.quick, device, args.batch_size, Checkpoints(Path(tmp)))
        for name in names:
            log(f"[{name}] ...")
            rows += measure(name, ctx, args, rate)
    flops = {r.method: r.flops for r in rows if r.flops}
    disp = display(rows, rate, flops)
    print()
    print(render(disp, RIGHT))
    print()
    for r in rows:
        for site in r.sync_sites:
            print(f"sync {r.method}: {site}")
    for g in goals(rows):
        print(g)
    csv_rows = [
        {
            **{k.replace(" ", "_").replace("/", "_per_").replace("%", "pct"): v for k, v in d.items()},
            "status": r.status,
            "suite_seconds_per_step": r.suite_s,
            "bare_seconds_per_step": r.bare_s,
            "flops_per_step": r.flops if r.flops is not None else flops.get(r.method),
            "matmul_flops_per_s": rate,
            "device": device_label(device),
            "quick": args.quick,
            "sync_sites": " | ".join(r.sync_sites),
        }
        for r, d in zip(rows, disp, strict=True)
    ]
    write_csv(args.out, csv_rows)
    print(f"CSV written to {args.out}; load average at end {loadavg()}")
    failed = [f"{r.method}/{r.compile}" for r in rows if r.status == "failed"]
    if failed:
        print("FAILED: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
