"""NSFSE's encoders: the paper's CNN grid + BiGRU over the training vocabulary (word embeddings from GloVe
when given), and the CLIP-feature variant's towers (not from the paper)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fgbench.clip_dual import ClipConfig, build_tokenizer, build_towers
from fgbench.data.module import DataInfo
from fgbench.encoders import ImageTowerConfig, Tokenizer, WordTokenizer, build_text_encoder
from fgbench.encoders.tokenizers import SPECIALS

from .config import NSFSEConfig


class Encoders(NamedTuple):
    """What `NSFSE.build` needs from a pair of encoders."""

    image: nn.Module  # a grid of cells (tokens), after `cls_tokens` leading non-grid tokens, and a global
    text: nn.Module  # word tokens and a sentence vector
    tokenizer: Tokenizer
    tower: ImageTowerConfig  # the processor's size, normalisation and transforms
    word_init: str  # result.json's `details.nsfse.word_init`
    cls_tokens: int = 0  # leading non-grid tokens of the image encoder (CLIP's CLS)


def load_glove(path: str | Path, words: Sequence[str], dim: int) -> tuple[Tensor, Tensor]:
    """Vectors of `words` from a GloVe text file (`word v1 .. v_dim` per line): ([len(words), dim], found)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"nsfse: glove_path {str(path)!r} is not a file (GloVe text: 'word v1 .. vD')"
        )
    row = {w: i for i, w in enumerate(words)}
    vectors = torch.zeros(len(words), dim)
    found = torch.zeros(len(words), dtype=torch.bool)
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in row:
                continue
            values = rest.split()
            if len(values) != dim:
                raise ValueError(
                    f"{path}:{line_no}: {len(values)} values for {word!r}, expected word_dim = {dim}"
                )
            vectors[row[word]] = torch.tensor([float(v) for v in values])
            found[row[word]] = True
    return vectors, found


def cnn_bigru(hp: NSFSEConfig, data: DataInfo, weights_path: str | None, glove_path: str | None) -> Encoders:
    """The paper's encoders: a timm/tiny CNN grid and a BiGRU over the training vocabulary."""
    image = hp.image.build(weights_path)
    tokenizer = WordTokenizer.build(data.train_texts, hp.max_words, hp.max_len)
    text = build_text_encoder(
        "gru",
        vocab_size=tokenizer.vocab_size,
        word_dim=hp.word_dim,
        hidden=hp.text_hidden,
        bidirectional=True,
        pool="max",
    )
    word_init = "random"
    if glove_path is not None:
        vectors, found = load_glove(glove_path, tokenizer.words, hp.word_dim)
        rows = torch.arange(len(tokenizer.words)) + len(SPECIALS)
        with torch.no_grad():
            text.embed.weight[rows[found]] = vectors[found]
        word_init = f"glove ({int(found.sum())} of {len(found)} words): {glove_path}"
    return Encoders(image, text, tokenizer, hp.image, word_init)


def clip_encoders(hp: NSFSEConfig, data: DataInfo, clip_path: str) -> Encoders:
    """The variant's encoders (not from the paper): CLIP towers and BPE tokenizer from `clip_path`."""
    cfg = ClipConfig(pretrained=True, max_len=min(77, hp.max_len + 2))
    tokenizer = build_tokenizer(cfg, data, clip_path)
    image, text = build_towers(cfg, tokenizer, hp.image.size, clip_path)  # type: ignore[arg-type]
    size = tuple(image.vision.embeddings.image_size)
    tower = replace(hp.image, size=size, norm="clip")
    return Encoders(image, text, tokenizer, tower, "clip", cls_tokens=1)
