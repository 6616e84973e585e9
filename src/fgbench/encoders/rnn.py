"""Recurrent text encoders: word embeddings -> (bi)GRU as in VSE++ (fartashf/vsepp, `EncoderText`) and the
NSFSE BiGRU (docs/methods.md §4), and the LSTM of TIRG (google/tirg, `TextLSTMModel`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fgbench.data.batches import Text
from fgbench.encoders.layers import get_pool, text_inputs, zero_padding
from fgbench.encoders.outputs import TextOutput
from fgbench.encoders.registry import register_text_encoder

_RNNS: dict[str, type[nn.RNNBase]] = {"gru": nn.GRU, "lstm": nn.LSTM}


@register_text_encoder("gru")
class RNNText(nn.Module):
    """Embedding (dim 300) -> GRU or LSTM; tokens = per-step outputs, glob = pooled outputs.

    `pool="last"` takes the final state of each direction (for a unidirectional RNN: the output at the last
    valid step, as VSE++ and TIRG); `"max"` max-pools the valid steps (NSFSE); `"mean"` averages them.
    Embeddings are initialised uniformly in ±0.1 as in VSE++.

    Example:
        >>> enc = RNNText(vocab_size=1005, word_dim=300, hidden=1024)
        >>> enc(Text(raw=raw, input_ids=ids, attention_mask=mask)).glob.shape  # [B, 1024]
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        word_dim: int = 300,
        hidden: int = 1024,
        num_layers: int = 1,
        bidirectional: bool = False,
        pool: Literal["last", "mean", "max"] = "last",
        rnn: Literal["gru", "lstm"] = "gru",
    ) -> None:
        super().__init__()
        self.pool = pool
        self.pool_fn = get_pool(pool)
        self.out_dim = hidden * (2 if bidirectional else 1)
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = _RNNS[rnn](word_dim, hidden, num_layers, batch_first=True, bidirectional=bidirectional)

    def forward(self, text: Text) -> TextOutput:
        ids, mask = text_inputs(text)
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        tokens, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        tokens = zero_padding(tokens, mask)
        if self.pool == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
            glob = torch.cat(list(h_n[-(2 if self.rnn.bidirectional else 1) :]), dim=-1)
        else:
            glob = self.pool_fn(tokens, mask)
        return TextOutput(glob=glob, tokens=tokens, mask=mask)


@register_text_encoder("lstm")
def lstm_text(
    *,
    vocab_size: int,
    word_dim: int = 512,
    hidden: int = 512,
    pool: Literal["last", "mean", "max"] = "last",
) -> RNNText:
    """TIRG's text encoder: embedding 512 -> LSTM 512, output at the last valid step.

    Example:
        >>> enc = build_text_encoder("lstm", vocab_size=1005)  # enc.out_dim == 512
    """
    return RNNText(vocab_size=vocab_size, word_dim=word_dim, hidden=hidden, pool=pool, rnn="lstm")
