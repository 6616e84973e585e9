"""IRRA's identity (ID) loss (Jiang & Ye, CVPR 2023; anosorae/IRRA `objectives.compute_id`), docs/methods.md
§7.

One classifier over the training identities is shared by both modalities, so image and text globals are pulled
towards the same class weights. Ported from the public code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def id_loss(
    classifier: Callable[[Tensor], Tensor], image_glob: Tensor, text_glob: Tensor, labels: Tensor
) -> Tensor:
    """½[CE(W f_v, y) + CE(W f_t, y)] with one shared `classifier` (e.g. nn.Linear(d, n_identities)).

    The globals are used as given (IRRA feeds the un-normalised CLS/EOT features).
    """
    return 0.5 * (
        F.cross_entropy(classifier(image_glob), labels) + F.cross_entropy(classifier(text_glob), labels)
    )
