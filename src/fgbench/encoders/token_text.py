"""Token-level text encoders with their tokenizers, by name: the caption side of the region-word scorers
(docs/methods.md §2-3), each built from one `TokenTextSizes` and the datamodule.

- `bert`: BERT word-pieces padded to `max_len`, the first `bert_layers` layers of the model (read offline);
- `tiny_text`: the training captions' word vocabulary and a TinyText of width `text_width`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from fgbench.encoders.registry import build_text_encoder
from fgbench.encoders.tokenizers import HFTokenizer, build_vocabulary

if TYPE_CHECKING:
    from fgbench.data.module import DataInfo


@dataclass
class TokenTextSizes:
    """Which token-level text encoder, and its sizes (the first fields of the methods' configs)."""

    text_encoder: str = "tiny_text"  # fgbench text encoder: tiny_text (word vocabulary) or bert (word-pieces)
    bert_layers: int = 6  # bert: keep its first N layers (fine-tuned)
    text_width: int = 64  # tiny_text: width (its depth 2, 4 heads, MLP 2x)
    max_words: int = 1000  # tiny_text: vocabulary cap (most frequent training words)
    max_len: int = 16  # tiny_text: words per caption; bert: word-pieces with [CLS]/[SEP] (the reference: 88)


TokenTextBuilder = Callable[[TokenTextSizes, str, "DataInfo"], tuple[Any, nn.Module]]


def _bert(hp: TokenTextSizes, bert_path: str, data: DataInfo) -> tuple[Any, nn.Module]:
    """BERT word-pieces padded to `max_len`, and the first `bert_layers` layers of the model (offline)."""
    tokenizer = HFTokenizer(bert_path, max_length=hp.max_len)
    return tokenizer, build_text_encoder("bert", name_or_path=bert_path, num_layers=hp.bert_layers)


def _tiny_text(hp: TokenTextSizes, bert_path: str, data: DataInfo) -> tuple[Any, nn.Module]:
    """The training captions' word vocabulary and a TinyText of width `text_width`."""
    tokenizer = build_vocabulary(data.train_texts, hp.max_words, 1, hp.max_len)
    encoder = build_text_encoder(
        "tiny_text",
        vocab_size=tokenizer.vocab_size,
        max_len=hp.max_len + 2,
        width=hp.text_width,
        mlp_dim=2 * hp.text_width,
    )
    return tokenizer, encoder


# text_encoder name -> (sizes, bert_path, datamodule) -> (tokenizer, encoder)
TOKEN_TEXT_ENCODERS: dict[str, TokenTextBuilder] = {
    "bert": _bert,
    "tiny_text": _tiny_text,
}


def build_token_text(hp: TokenTextSizes, bert_path: str, data: DataInfo) -> tuple[Any, nn.Module]:
    """(tokenizer, encoder) of `hp.text_encoder` at `hp`'s sizes; `bert_path` is read by `bert` only."""
    if hp.text_encoder not in TOKEN_TEXT_ENCODERS:
        raise ValueError(f"text_encoder {hp.text_encoder!r} is not one of {', '.join(TOKEN_TEXT_ENCODERS)}")
    return TOKEN_TEXT_ENCODERS[hp.text_encoder](hp, bert_path, data)
