"""The summed-hinge warm-up of the hardest-negative hinge (vsepp, teran, racg): how many epochs sum the hinge
over all negatives before the hardest negative takes over, and how result.json records it."""

from __future__ import annotations

from fgbench.data.module import TaskFamily

ALL_EPOCHS = 1 << 30  # a summed-hinge warm-up that never ends


def summed_hinge_epochs(epochs: int | None, family: TaskFamily) -> int:
    """Epochs of the hinge summed over all negatives (VSE0) before the hardest negative takes over.

    `epochs` when given (the paper profiles: 0). None, the tiny profiles: one epoch on image-text matching
    data (vse_infty's `vse_mean_warmup_epochs`), every epoch on person and class data. There the gallery is
    near-duplicates (one silhouette, a few attributes apart), and from scratch the hardest negative after one
    summed epoch collapsed the scores: teran on synth-person, seed 0, 8 epochs, R1 1.56 (chance 1.56, loss
    at 2·B·α); summed throughout, R1 4.88 with the loss still falling.
    """
    if epochs is not None:
        return epochs
    return 1 if family == "itm" else ALL_EPOCHS


def warmup_label(epochs: int) -> int | str:
    """The summed-hinge warm-up as result.json records it ("all" when it never ends)."""
    return "all" if epochs >= ALL_EPOCHS else epochs
