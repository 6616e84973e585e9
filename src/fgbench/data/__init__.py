"""Shared data contracts: batch dataclasses, processors, validation helpers and the DataModule base."""

from fgbench.data.batches import (
    ComposedQueryBatch,
    PairBatch,
    Text,
    TextBatch,
    TripletBatch,
    Visual,
    VisualBatch,
)
from fgbench.data.processor import BasicProcessor, Processor

__all__ = [
    "BasicProcessor",
    "ComposedQueryBatch",
    "PairBatch",
    "Processor",
    "Text",
    "TextBatch",
    "TripletBatch",
    "Visual",
    "VisualBatch",
]
