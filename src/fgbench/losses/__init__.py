"""Losses shared by several methods (docs/methods.md §1, §2, §4, §5, §7-§10): pure functions on batch tensors,
plus `DynamicThreshold` where state (an EMA) is needed. Each module names the paper and repository it follows.

>>> from fgbench.losses import infonce, sdm
>>> loss = sdm(text_glob, image_glob, person_ids) + infonce(text_glob, image_glob, temperature=0.02)
"""

from fgbench.losses.contrastive import batch_classification, infonce, same_target_mask
from fgbench.losses.identity import id_loss
from fgbench.losses.mlm import IGNORE_INDEX, mask_tokens, mlm_loss
from fgbench.losses.multi_similarity import (
    DynamicThreshold,
    equal_z_threshold,
    multi_similarity_ns,
    score_stats,
)
from fgbench.losses.sdm import sdm, sdm_from_logits
from fgbench.losses.triplet import hardest_negative_triplet

__all__ = [
    "IGNORE_INDEX",
    "DynamicThreshold",
    "batch_classification",
    "equal_z_threshold",
    "hardest_negative_triplet",
    "id_loss",
    "infonce",
    "mask_tokens",
    "mlm_loss",
    "multi_similarity_ns",
    "same_target_mask",
    "score_stats",
    "sdm",
    "sdm_from_logits",
]
