"""EvalSpec: everything the evaluator needs besides the scores (docs/protocols.md).

A DataModule builds one per evaluation split; methods never see it (they see only query and gallery batches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class EvalSpec:
    """Labels and protocol extras for one evaluation.

    Rows of the score matrix are queries, columns gallery items; a gallery item is relevant to a query when
    their labels are equal. For the image-text protocols rows are images and columns captions.
    """

    protocol: str  # protocol id of docs/protocols.md, e.g. "person_t2i", "cirr"
    query_labels: Tensor | None  # Long[Q]; None where targets are unreleased (CIRR test1, FashionIQ test)
    gallery_labels: Tensor  # Long[G]
    exclude: Tensor | None = None  # Long[Q]: a gallery index removed from each query's candidates, -1 = none
    subsets: Tensor | None = None  # Long[Q, M]: CIRR img_set members as gallery indices (reference included)
    groups: dict[str, tuple[Tensor, Tensor]] | None = None  # name -> (query idx, gallery idx), scored apart
    # stable string id of each score row (caption id, CIRR pair id, image id; image-text: the image): the key
    # of the per-query outcomes (evaluation/outcomes.py) and the CIRR submission's pair ids; None = position
    query_ids: list[str] | None = None
    # stable string id of each column (CIRR image names for the submission; image-text: the caption ids,
    # class_reed: the image ids, since those columns are queries of the reverse direction)
    gallery_names: list[str] | None = None
    # pooled class queries (class_reed): the id of the row pooled from each query label (the class name)
    label_names: dict[int, str] | None = None
    info: dict[str, Any] = field(
        default_factory=dict
    )  # split, caption policy, feature source... (result.json)

    @property
    def n_query(self) -> int:
        if self.query_labels is not None:
            return int(self.query_labels.numel())
        if self.exclude is not None:
            return int(self.exclude.numel())
        if self.query_ids is not None:
            return len(self.query_ids)
        raise ValueError("EvalSpec without query labels needs `exclude` or `query_ids` to know n_query")

    @property
    def n_gallery(self) -> int:
        return int(self.gallery_labels.numel())

    def to(self, device: torch.device | str) -> EvalSpec:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        groups = None
        if self.groups is not None:
            groups = {k: (q.to(device), g.to(device)) for k, (q, g) in self.groups.items()}
        return EvalSpec(
            protocol=self.protocol,
            query_labels=mv(self.query_labels),
            gallery_labels=self.gallery_labels.to(device),
            exclude=mv(self.exclude),
            subsets=mv(self.subsets),
            groups=groups,
            query_ids=self.query_ids,
            gallery_names=self.gallery_names,
            label_names=self.label_names,
            info=dict(self.info),
        )
