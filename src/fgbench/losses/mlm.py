"""Masked-token modelling for IRRA's implicit relation reasoning (Jiang & Ye, CVPR 2023; anosorae/IRRA
`datasets/bases.py::_build_random_masked_tokens_and_labels` and `objectives.compute_mlm`), docs/methods.md §7;
also MMRef's local reconstruction (§1).

Ported from the public code (BERT-style 15% / 80-10-10), vectorised, with two deliberate differences: the
label of an unchosen position is `IGNORE_INDEX` (-100) instead of 0, and a caption with no chosen token gets
one chosen uniformly among its real tokens, which then goes through the same 80/10/10 split (the code always
masks position 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    special_ids: Sequence[int] | Tensor,
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Choose tokens to predict and corrupt them; returns (masked_ids, labels), both shaped like `input_ids`.

    A real token is one under `attention_mask` whose id is not in `special_ids` (the caller lists SOT/EOT,
    BOS/EOS, PAD and the like). Each real token is chosen with probability `prob`, at least one per caption
    that has a real token; of the chosen, 80% become `mask_id`, 10% a uniformly random id in [0, vocab_size)
    that is neither special nor `mask_id`, 10% stay unchanged. `labels` holds the original id at chosen
    positions and `IGNORE_INDEX` elsewhere.

    Args:
        input_ids: Long[B, L] token ids.
        attention_mask: [B, L], True/1 on tokens, False/0 on padding.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"mask_tokens: attention_mask shape {tuple(attention_mask.shape)} "
            f"!= input_ids shape {tuple(input_ids.shape)}"
        )
    device = input_ids.device
    special = torch.as_tensor(special_ids, dtype=input_ids.dtype, device=device).reshape(-1)
    real = attention_mask.bool() & ~torch.isin(input_ids, special)

    def uniform() -> Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=device)

    chosen = real & (uniform() < prob)
    forced = real.any(dim=1) & ~chosen.any(dim=1)
    pick = uniform().masked_fill(~real, -1.0).argmax(dim=1)
    # no boolean-mask indexing here or below: on a GPU it waits for the device (a sync per training step)
    positions = torch.arange(input_ids.shape[1], device=device)
    chosen = chosen | (forced[:, None] & (positions[None, :] == pick[:, None]))

    action = uniform()
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    # the random token: the draw-th id of [0, vocab_size) that is neither special nor mask_id, found by
    # stepping over the excluded ids (sorted, known on the host) instead of indexing a filtered vocabulary
    ids = special_ids.tolist() if isinstance(special_ids, Tensor) else special_ids
    excluded = sorted(i for i in {int(i) for i in ids} | {int(mask_id)} if 0 <= i < vocab_size)
    draw = torch.randint(vocab_size - len(excluded), input_ids.shape, generator=generator, device=device)
    for e in excluded:
        draw = draw + (draw >= e).to(draw.dtype)

    masked = input_ids.masked_fill(to_mask, mask_id)
    masked = torch.where(to_random, draw.to(input_ids.dtype), masked)
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    return masked, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over the chosen positions; `labels` is IGNORE_INDEX elsewhere (as from `mask_tokens`).

    Args:
        logits: [B, L, V] vocabulary logits.
        labels: Long[B, L].
    Returns 0 (still attached to the graph) when no position is chosen, instead of CE's NaN.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"mlm_loss: labels shape {tuple(labels.shape)} != logits[..., 0] {tuple(logits.shape[:-1])}"
        )
    flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    n_chosen = (flat_labels != IGNORE_INDEX).sum()
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / n_chosen.clamp(min=1)
