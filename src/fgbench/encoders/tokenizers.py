"""Tokenizers that run in the DataLoader workers (picklable, fixed-length output for equal gather shapes).

`WordTokenizer`: the tiny profile's word vocabulary built from the training captions (lower-cased, punctuation
stripped, as the vocabularies of VSE++ and TIRG; docs/methods.md "Tiny profile"). `HFTokenizer`: a
transformers tokenizer (CLIP BPE, BERT word-pieces) loaded offline and padded to a fixed length; transformers
is imported when it is built (importing it takes seconds).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>", "<unk>")  # ids 0..4


class Tokenizer(Protocol):
    """What a processor needs: captions -> {"input_ids": Long[B,L], "attention_mask": Long[B,L]}."""

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]: ...


def split_words(text: str) -> list[str]:
    """Lower-case, replace punctuation by spaces, split on whitespace."""
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


class WordTokenizer:
    """Word-level tokenizer: `<bos> w1 .. wn <eos>` padded with 0 to `max_len + 2`; unknown words -> `<unk>`.

    Example:
        >>> tok = WordTokenizer.build(["A man in a red shirt.", "A woman."], max_words=1000, max_len=16)
        >>> tok(["a man"])["input_ids"].shape  # [1, 18]
    """

    pad_id, bos_id, eos_id, mask_id, unk_id = range(len(SPECIALS))

    def __init__(self, words: Sequence[str], max_len: int = 16) -> None:
        if len(set(words)) != len(words) or set(words) & set(SPECIALS):
            raise ValueError("WordTokenizer: the vocabulary has duplicate words or reserved tokens")
        self.words = list(words)
        self.max_len = max_len
        self._ids = {w: i for i, w in enumerate(SPECIALS + tuple(self.words))}

    @classmethod
    def build(cls, captions: Iterable[str], max_words: int = 1000, max_len: int = 16) -> WordTokenizer:
        """The `max_words` most frequent words of `captions`, ordered by frequency, then alphabetically."""
        counts = Counter(w for caption in captions for w in split_words(caption))
        ranked = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:max_words]
        return cls([w for w, _ in ranked], max_len)

    @property
    def vocab_size(self) -> int:
        return len(self._ids)

    def encode(self, text: str) -> list[int]:
        """Ids of one caption, truncated to `max_len` words, with bos/eos, unpadded."""
        ids = [self._ids.get(w, self.unk_id) for w in split_words(text)[: self.max_len]]
        return [self.bos_id, *ids, self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        """The words of `ids`, reserved tokens other than `<unk>` and `<mask>` dropped."""
        vocab = SPECIALS + tuple(self.words)
        return " ".join(vocab[i] for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id))

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = torch.full((len(texts), self.max_len + 2), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            enc = self.encode(text)
            ids[row, : len(enc)] = torch.tensor(enc)
        return {"input_ids": ids, "attention_mask": ids.ne(self.pad_id).long()}

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (reserved tokens implied)."""
        data = {"kind": "word", "max_len": self.max_len, "words": self.words}
        Path(path).write_text(json.dumps(data, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("kind") != "word":
            raise ValueError(f"{path}: field 'kind' is {data.get('kind')!r}, expected 'word'")
        return cls(data["words"], int(data["max_len"]))


class HFTokenizer:
    """`AutoTokenizer.from_pretrained(name_or_path)` (offline by default), padded/truncated to `max_length`.

    Truncation keeps the special tokens (CLIP's EOT, BERT's [SEP]).

    Example:
        >>> tok = HFTokenizer("openai/clip-vit-base-patch16", max_length=77)
        >>> tok(["a man"])["input_ids"].shape  # [1, 77]
    """

    def __init__(self, name_or_path: str | Path, max_length: int = 77, local_files_only: bool = True) -> None:
        from transformers import AutoTokenizer

        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local_files_only)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        out = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def build_vocabulary(texts: list[str], max_words: int, min_count: int, max_len: int) -> WordTokenizer:
    """vsepp's vocabulary: training words seen at least `min_count` times (at most `max_words` of them)."""
    counts = Counter(w for text in texts for w in split_words(text))
    ranked = sorted((wc for wc in counts.items() if wc[1] >= min_count), key=lambda wc: (-wc[1], wc[0]))
    return WordTokenizer([w for w, _ in ranked[:max_words]], max_len)
