"""BERT truncated to its first N layers, as TERAN's text encoder (bert-base-uncased, 6 layers; mesnico/TERAN,
docs/methods.md §2) and RACG's. transformers is imported when the encoder is built (importing it takes
seconds).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fgbench.data.batches import Text
from fgbench.encoders.hf import load_hf_model
from fgbench.encoders.layers import text_inputs, zero_padding
from fgbench.encoders.outputs import TextOutput
from fgbench.encoders.registry import register_text_encoder


@register_text_encoder("bert")
class BertText(nn.Module):
    """The first `num_layers` layers of a BERT (only those are loaded); tokens = last hidden states, glob =
    CLS (the pooler is dropped).

    Example:
        >>> enc = BertText(name_or_path="bert-base-uncased", num_layers=6)
        >>> enc(Text(raw=raw, input_ids=ids, attention_mask=mask)).tokens.shape  # [B, L, 768]
    """

    def __init__(
        self, *, name_or_path: str | Path, num_layers: int = 6, local_files_only: bool = True
    ) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = load_hf_model(
            BertModel,
            name_or_path,
            local_files_only=local_files_only,
            num_hidden_layers=num_layers,
            add_pooling_layer=False,
        )
        self.out_dim: int = self.bert.config.hidden_size

    def forward(self, text: Text) -> TextOutput:
        ids, mask = text_inputs(text)
        # the padding mask as a 4-D additive bias, which transformers uses as given: a 2-D mask is checked
        # with `padding_mask.all()`, which makes the host wait for the GPU at every call
        bias = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], device=mask.device)
        bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(bias.dtype).min)
        tokens = zero_padding(self.bert(input_ids=ids, attention_mask=bias).last_hidden_state, mask)
        return TextOutput(glob=tokens[:, 0], tokens=tokens, mask=mask)
