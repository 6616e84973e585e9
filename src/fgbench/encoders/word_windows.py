"""Which token positions of a caption are scored as words, for token-level (pairwise) scorers.

Captions are right-padded id sequences framed by a start and an end token ([CLS] ... [SEP], or the word
vocabulary's start/end). A span rule picks the positions between them that count as words; the window a
caption is scored over drops the frame. The rules follow mesnico/TERAN's `s_seq[:, 1:-2]` slice and the
variants of docs/methods.md §2 and docs/protocols.md §6.7.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fgbench.encoders.layers import zero_padding


def _span_reference(valid: Tensor, length: Tensor, pos: Tensor, final_punct: Tensor) -> Tensor:
    return valid & (pos >= 1) & (pos <= length - 3)


def _span_drop_period(valid: Tensor, length: Tensor, pos: Tensor, final_punct: Tensor) -> Tensor:
    return _span_all_words(valid, length, pos, final_punct) & ~((pos == length - 2) & final_punct)


def _span_all_words(valid: Tensor, length: Tensor, pos: Tensor, final_punct: Tensor) -> Tensor:
    return valid & (pos >= 1) & (pos <= length - 2)


WORD_SPANS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "reference": _span_reference,  # words 1..len-3, as mesnico/TERAN
    "drop_period": _span_drop_period,  # [CLS], [SEP], and the token before [SEP] when it is punctuation
    "all_words": _span_all_words,  # every token between [CLS] and [SEP]
}


def word_mask(ids: Tensor, valid: Tensor, span: str, punct: Tensor) -> Tensor:
    """Bool [B, L]: the positions scored as words, for right-padded `ids` framed by a start and an end token.

    `punct` is a Bool[vocab] table of punctuation ids (empty for vocabularies without punctuation).
    """
    if span not in WORD_SPANS:
        raise ValueError(f"word_span {span!r} is not one of {', '.join(WORD_SPANS)}")
    length = valid.long().sum(1, keepdim=True)
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    is_punct = punct.to(ids.device)[ids.clamp(0, max(0, punct.numel() - 1))] if punct.numel() else None
    final_punct = torch.zeros_like(valid) if is_punct is None else is_punct & valid
    return WORD_SPANS[span](valid, length, pos, final_punct)


def scored_tokens(x: Tensor, words: Tensor, span: str) -> tuple[Tensor, Tensor]:
    """The window a caption is scored over, [B, W, d] zero outside the words, and its word mask [B, W].

    Positions 1..T-3 under `reference` (mesnico/TERAN slices `s_seq[:, 1:-2]` of its padded buffer, so
    its `zero_pad_quirk` sees exactly its zeros), 1..T-2 otherwise ([CLS] and the last slot never hold a
    word).
    """
    end = x.shape[1] - (2 if span == "reference" else 1)
    words = words[:, 1:end]
    return zero_padding(x[:, 1:end], words), words


def punctuation_table(tokenizer: Any) -> Tensor:
    """Bool[vocab] of the ids whose token is only punctuation (BERT's ".", ","...); empty for word
    vocabularies (the WordTokenizer strips punctuation)."""
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is None:
        return torch.zeros(0, dtype=torch.bool)
    table = torch.zeros(len(hf), dtype=torch.bool)
    for token, i in hf.get_vocab().items():
        if token and all(unicodedata.category(c).startswith("P") for c in token):
            table[i] = True
    return table
