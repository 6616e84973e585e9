"""The synthetic stand-ins the benchmarks share: captions, a CLIP tokenizer of the real vocabulary size,
paper-size random checkpoints, a DataModule with only what `build` reads, and the registry of a script's
cases (or presets).

Not a benchmark itself: the scripts import it as `_fakes` (their own folder is on `sys.path`), next to
`_bench` (measuring and reporting). Nothing here needs pretrained weights or a dataset on disk.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from _bench import log

T = TypeVar("T")

# -- case registries -----------------------------------------------------------------------------------


class Registry(dict[str, T]):
    """A script's named cases (or presets), in registration order; `--only` selects from it."""

    def __init__(self, kind: str, items: dict[str, T] | None = None) -> None:
        super().__init__(items or {})
        self.kind = kind  # "method", "case", "preset": how `--only` errors name an entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@CASES.register("name")` over the case's builder."""

        def deco(value: T) -> T:
            self[name] = value
            return value

        return deco

    def select(self, only: str | None, parser: argparse.ArgumentParser) -> list[str]:
        """The names `--only` asks for (all when None); an unknown one is a usage error."""
        names = list(self) if only is None else only.split(",")
        unknown = sorted(set(names) - set(self))
        if unknown:
            parser.error(f"--only: unknown {self.kind}(s) {unknown}; known: {', '.join(self)}")
        return names


def method_class(name: str) -> type:
    """The registered method class, or an exception saying why not (reported as a skipped row)."""
    from fgbench.registry import METHODS

    return METHODS.get(name)


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
    """A person-style caption: who wears what, then up to three actions (9-25 words and punctuation)."""
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


def save_clip_tokenizer(path: Path) -> Path:
    """A byte-level CLIP tokenizer with CLIP's 49,408-entry vocabulary (fillers instead of merges)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars)]
    vocab += [f"fill{i}</w>" for i in range(CLIP_VOCAB - 2 - len(vocab))]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer(vocab={w: i for i, w in enumerate(vocab)}, merges=[]).save_pretrained(path)
    return path


def save_random_clip(path: Path) -> Path:
    """A random CLIP ViT-B/16 and `save_clip_tokenizer`'s tokenizer. transformers' CLIP defaults are
    ViT-B/32's (vision 768 x 12 layers; text 512 x 12 layers, 49,408 tokens, SOT/EOT its last two ids;
    projection 512): only the patch changes."""
    from transformers import CLIPConfig, CLIPModel

    save_clip_tokenizer(path)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(vision_config={"patch_size": 16})).save_pretrained(path)
    return path


def save_random_bert(path: Path) -> Path:
    """A random bert-base (transformers' BertConfig defaults: 768 wide, 12 heads, 30,522 word-pieces) cut
    to 6 layers (TERAN loads only those) and a word-piece tokenizer of the real vocabulary size (the
    synthetic captions' words, then fillers)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    size = BertConfig().vocab_size
    words = sorted({w for c in captions(512, seed=1) for w in c.replace("-", " - ").split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", *words]
    vocab += [f"[fill{i}]" for i in range(size - len(vocab))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(num_hidden_layers=6)).save_pretrained(path)
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


CHECKPOINT_WRITERS: dict[str, Callable[[Path], Path]] = {
    "clip": save_random_clip,
    "bert": save_random_bert,
    "resnet50": save_random_resnet50,
}


class Checkpoints:
    """Paper-size random checkpoints, written once per run into a temp folder on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: dict[str, Path] = {}

    def get(self, kind: str) -> Path:
        if kind not in self._made:
            folder = self.root / kind
            folder.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            self._made[kind] = CHECKPOINT_WRITERS[kind](folder)
            log(f"  wrote a random paper-size {kind} checkpoint in {time.perf_counter() - t0:.1f} s")
        return self._made[kind]
