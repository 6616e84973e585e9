"""Loading transformers models from the local cache or a folder, failing loudly on missing weights (the paper
profile must never silently train from a random initialisation; docs/methods.md §6).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from transformers import PreTrainedModel

M = TypeVar("M", bound="PreTrainedModel")


def load_hf_model(
    cls: type[M], name_or_path: str | Path, *, local_files_only: bool = True, **kwargs: Any
) -> M:
    """`cls.from_pretrained(name_or_path, **kwargs)`, offline by default; an error if any weight is missing.

    Unused checkpoint weights (another tower, dropped layers, a pooler) are fine; transformers itself refuses
    weights of the wrong shape.

    Example:
        >>> bert = load_hf_model(BertModel, "bert-base-uncased", num_hidden_layers=6)
    """
    model, info = cls.from_pretrained(
        str(name_or_path), local_files_only=local_files_only, output_loading_info=True, **kwargs
    )
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(f"{name_or_path}: the checkpoint lacks weights of {cls.__name__}: {missing[:8]}")
    return model
