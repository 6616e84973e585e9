"""Evaluator-level ensembles: the (weighted) mean of trained runs' score matrices, block by block.

TERAN's ensemble rows (docs/methods.md §2: MrSw + symm) average two models' similarity matrices; this module
does it for any methods whose tasks fit the data. Each member is a checkpoint of a trained run, loaded safely
(`torch.load(weights_only=True)`, refused before anything is built when it holds other objects), rebuilt on
the DataModule (vocabulary, heads) and restored; every member encodes the evaluation items with its own
encoders, their features are kept apart (`aux` entries prefixed `<member>:`), and the ensemble's score of a
block of queries x gallery items is the weighted mean of the members' `score` on that block, so the evaluator
walks it in bounded memory as any pairwise scorer. `rerank_k` re-ranks with the mean of the members'
`rescore_pairs`. A member that sets its own `rerank_k` contributes its coarse `score`.

A member's class comes from `classes` (registry names or class paths), else from the checkpoint's
`_class_path` hyper-parameter (LightningCLI runs), else from the run's `config.yaml` two folders above the
checkpoint (`runs/<dataset>/<method>/<profile>/seed<k>-<hash>/checkpoints/last.ckpt`).

Members share the DataModule's loaders, so on raw images they must agree on the image transform (size,
mean, std, test preset); captions are re-tokenised from their raw text for a member whose tokenizer differs
from the first member's.

Usage (no training: `fit` also goes straight to the test run):

    python -m fgbench test --config experiments/configs/data/f30k.yaml \\
        --config experiments/configs/profile/paper.yaml \\
        --model fgbench.ensemble.Ensemble \\
        --model.init_args.members '[runs/f30k/teran/paper/seed0-<MrSw>/checkpoints/last.ckpt,
                                    runs/f30k/teran/paper/seed0-<symm>/checkpoints/last.ckpt]'

The run directory is `runs/<dataset>/ensemble/<profile>/...` (`profile` is only a label here); result.json
lists the members, their methods and weights under `details.ensemble`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from torch import Tensor, nn

from fgbench.data.batches import Text
from fgbench.data.module import DataInfo, RetrievalDataModule
from fgbench.encoders.tokenizers import WordTokenizer
from fgbench.features import Features
from fgbench.io import check_checkpoint
from fgbench.method import RetrievalMethod
from fgbench.registry import METHODS, register_method

IMAGE_SETTINGS = ("image_size", "mean", "std", "test_transform", "targetpad_ratio")


def pack(parts: Sequence[Features]) -> Features:
    """One Features holding every member's tensors as `aux` entries `<member>:<name>` (same index)."""
    aux = {f"{i}:{k}": v for i, f in enumerate(parts) for k, v in f.tensors().items() if k != "index"}
    return Features(index=parts[0].index, aux=aux)


def unpack(f: Features, member: int) -> Features:
    """Member `member`'s Features out of a packed one."""
    prefix = f"{member}:"
    own = {k[len(prefix) :]: v for k, v in f.aux.items() if k.startswith(prefix)}
    return Features.from_tensors({"index": f.index, **own})


def resolve_class(spec: str) -> type[RetrievalMethod]:
    """A registry name (`teran`) or a class path (`methods.teran.TERAN`)."""
    cls = METHODS.resolve(spec)
    if not (isinstance(cls, type) and issubclass(cls, RetrievalMethod)):
        raise TypeError(f"ensemble: {spec!r} is not a RetrievalMethod class")
    return cls


def member_class(path: Path, ckpt: dict[str, Any], given: str | None) -> type[RetrievalMethod]:
    """The class of a member: given, the checkpoint's `_class_path`, or the run's config.yaml."""
    if given:
        return resolve_class(given)
    class_path = ckpt.get("hyper_parameters", {}).get("_class_path")
    if class_path:
        return resolve_class(str(class_path))
    config = path.resolve().parent.parent / "config.yaml"
    if config.is_file():
        model = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model") or {}
        if model.get("class_path"):
            return resolve_class(str(model["class_path"]))
    raise ValueError(
        f"ensemble: cannot tell the method of {path}: no `_class_path` in its hyper-parameters and no "
        f"{config} with model.class_path; pass `classes` (registry names or class paths, one per member)"
    )


def _same_tokenizer(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, WordTokenizer) and isinstance(b, WordTokenizer):
        return (a.words, a.max_len) == (b.words, b.max_len)
    return False


def _image_settings(processor: Any) -> tuple[Any, ...]:
    return (type(processor).__name__, *(getattr(processor, f, None) for f in IMAGE_SETTINGS))


@register_method("ensemble")
class Ensemble(RetrievalMethod):
    """The weighted mean of trained runs' score matrices (evaluation only).

    Args:
        members: checkpoint paths of trained runs (any methods whose tasks fit the data).
        weights: one weight per member (default equal); scores are Σ w_i S_i / Σ w_i.
        classes: one class per member (registry name or class path), when the checkpoints do not say.
        profile: a label for the run directory (the members keep their own profiles).
        rerank_k: re-rank each query's top-k of the mean score with the mean of the members' re-scores.
    """

    provenance: ClassVar[str] = "evaluator-level ensemble: mean of the members' score matrices"
    tasks: ClassVar[frozenset[str]] = frozenset({"text-image", "image-text", "composed"})
    trains: ClassVar[bool] = False

    def __init__(
        self,
        members: list[str],
        weights: list[float] | None = None,
        classes: list[str] | None = None,
        profile: str = "tiny",
        rerank_k: int | None = None,
    ) -> None:
        if not members:
            raise ValueError("ensemble: `members` is empty; give one checkpoint path per member")
        for what, values in (("weights", weights), ("classes", classes)):
            if values is not None and len(values) != len(members):
                raise ValueError(f"ensemble: {len(values)} {what} for {len(members)} members")
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"ensemble: weights {weights} must be >= 0 with a positive sum")
        super().__init__(profile=profile, rerank_k=rerank_k)
        self.save_hyperparameters()
        self.member_paths = [str(p) for p in members]
        self.weights = [float(w) for w in (weights or [1.0] * len(members))]
        self.classes = list(classes) if classes is not None else [None] * len(members)
        self.members = nn.ModuleList()
        self._retokenize: list[bool] = []

    # -- building --------------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        """Load, rebuild on the data and restore every member; the first member's processor serves all."""
        if len(self.members):
            return
        for path, given in zip(self.member_paths, self.classes, strict=True):
            self.members.append(self.load_member(Path(path), data, given))
        first = self.members[0]
        self.processor = first.processor
        if data.feature_source == "images":
            ref = _image_settings(first.processor)
            for path, m in zip(self.member_paths, self.members, strict=True):
                if _image_settings(m.processor) != ref:
                    raise ValueError(
                        f"ensemble: member {path} transforms images as {_image_settings(m.processor)}, the "
                        f"first member as {ref}; members on raw images must share the image transform"
                    )
        tok = getattr(first.processor, "tokenizer", None)
        self._retokenize = [
            not _same_tokenizer(getattr(m.processor, "tokenizer", None), tok) for m in self.members
        ]

    @staticmethod
    def load_member(path: Path, data: DataInfo, given: str | None = None) -> RetrievalMethod:
        """One trained run: safe load, rebuild on `data`, restore its weights (strict)."""
        check_checkpoint(path)  # refuses anything torch.load(weights_only=True) cannot read
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" not in ckpt:
            raise ValueError(f"ensemble: {path} has no 'state_dict'; expected a Lightning checkpoint")
        cls = member_class(path, ckpt, given)
        hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
        model = cls(**hparams)
        model.build(data)
        model.load_state_dict(ckpt["state_dict"])
        return model

    # -- encoding --------------------------------------------------------------------------------------------
    def _member_batch(self, i: int, batch: Any) -> Any:
        """`batch` as member i sees it: captions re-tokenised when its tokenizer differs."""
        text = getattr(batch, "text", None)
        if not self._retokenize[i] or not isinstance(text, Text):
            return batch
        tok = self.members[i].processor.tokenize(text.raw)
        if tok is None:
            return dataclasses.replace(batch, text=Text(raw=text.raw))
        device = batch.index.device
        ids, mask = tok["input_ids"].to(device), tok.get("attention_mask")
        retok = Text(raw=text.raw, input_ids=ids, attention_mask=None if mask is None else mask.to(device))
        return dataclasses.replace(batch, text=retok)

    def _encode(self, batch: Any, fn: Callable[[RetrievalMethod, Any], Features]) -> Features:
        return pack([fn(m, self._member_batch(i, batch)) for i, m in enumerate(self.members)])

    def encode_queries(self, batch: Any) -> Features:
        return self._encode(batch, lambda m, b: m.encode_queries(b))

    def encode_gallery(self, batch: Any) -> Features:
        return self._encode(batch, lambda m, b: m.encode_gallery(b))

    def losses(self, batch: Any) -> dict[str, Tensor]:
        raise RuntimeError(
            "ensemble is evaluation-only: train its members, then run `test` with their checkpoints"
        )

    # -- scoring ---------------------------------------------------------------------------------------------
    def _mean(
        self, q: Features, g: Features, fn: Callable[[RetrievalMethod, Features, Features], Tensor]
    ) -> Tensor:
        total = sum(self.weights)
        out = None
        for i, (m, w) in enumerate(zip(self.members, self.weights, strict=True)):
            s = fn(m, unpack(q, i), unpack(g, i)).float() * (w / total)
            out = s if out is None else out + s
        assert out is not None
        return out

    def score(self, q: Features, g: Features) -> Tensor:
        return self._mean(q, g, lambda m, a, b: m.score(a, b))

    def score_pairs(self, q: Features, g: Features) -> Tensor:
        return self._mean(q, g, lambda m, a, b: m.score_pairs(a, b))

    def rescore_pairs(self, q: Features, g: Features) -> Tensor:
        return self._mean(q, g, lambda m, a, b: m.rescore_pairs(a, b))

    def pool_queries(self, q: Features, groups: Tensor) -> tuple[Features, Tensor]:
        pooled = [m.pool_queries(unpack(q, i), groups) for i, m in enumerate(self.members)]
        return pack([p for p, _ in pooled]), pooled[0][1]

    def prepare_eval(self, datamodule: RetrievalDataModule) -> None:
        for m in self.members:
            m.prepare_eval(datamodule)

    def run_details(self) -> dict[str, Any]:
        """The members, their methods and weights."""
        return {
            "ensemble": {
                "members": self.member_paths,
                "methods": [m.name or type(m).__name__ for m in self.members],
                "provenance": [m.provenance for m in self.members],
                "weights": self.weights,
            },
        }
