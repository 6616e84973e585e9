"""The TERAN LightningModule: independent region and word transformers, scored by pooling region-word
alignments (docs/methods.md §2; the package docstring of `methods.teran` gives the provenance)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import PairBatch, Text, TextBatch, Visual, VisualBatch
from fgbench.data.module import DataInfo
from fgbench.encoders.layers import text_inputs, zero_padding
from fgbench.encoders.regions import POS_ENCODINGS, region_extractor, region_inputs
from fgbench.encoders.token_text import TOKEN_TEXT_ENCODERS, build_token_text
from fgbench.encoders.word_windows import WORD_SPANS, punctuation_table, scored_tokens, word_mask
from fgbench.features import Features, cut_padding
from fgbench.losses import hardest_negative_triplet
from fgbench.losses.warmup import summed_hinge_epochs, warmup_label
from fgbench.optim import OptimConfig
from fgbench.pairwise import PairwiseMethod
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method

from .alignment import (
    POOLINGS,
    SCORE_DTYPES,
    alignment_scores,
    bucketed_alignment_matrix,
)
from .config import PROFILES


def te_stack(
    width: int, layers: int, heads: int, ff: int, dropout: float, what: str
) -> nn.TransformerEncoder:
    """TERAN's TE layers: PyTorch's post-LN ReLU TransformerEncoderLayer, batch first."""
    if width % heads:
        raise ValueError(f"teran: {what} width {width} is not divisible by heads={heads}")
    layer = nn.TransformerEncoderLayer(width, heads, ff, dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class Sets(NamedTuple):
    """One modality's encoded set: unit tokens [B, T, d] (zero where masked), Bool mask, unit global."""

    tok: Tensor
    mask: Tensor
    glob: Tensor


@register_method("teran")
class TERAN(PairwiseMethod):
    """TERAN: independent region and word transformers, scored by pooling region-word alignments.

    Args:
        profile: "tiny" or "paper" (PROFILES).
        alignment_mode: MrSw (default), MwSr, symm or MrAVGw.
        pos_encoding: region boxes as `concat-and-process` (default), `project-and-sum` or `none`;
            forced to `none` on data without boxes (precomp), recorded.
        shared_transformer: one joint TE stack for both modalities.
        word_span: `drop_period` (default), `reference` (words 1..len-3, the code) or `all_words`.
        zero_pad_quirk: masked words and regions count as 0 in the max, as the code's masked_fill.
        global_aux_loss: add the hinge on the position-0 globals (the code's `matching` loss); needed by
            `rerank_k`.
        mask_same_image: pairs sharing a label (the same image; the same identity on person data) are not
            negatives (off, as in the code).
        bert_path: the paper profile's BERT and tokenizer: a local folder or HF cache name (read offline).
        rerank_k: shortlist each query's top-k by the globals and re-score it by the alignment (a variant).
        optim: optimiser and schedule; default from the profile.
        loss_weights: weights of the loss terms `hinge` and `global_hinge`.
        overrides, **fields: `TERANConfig` fields replacing the profile's.
    """

    published_as: ClassVar[str] = "TERAN (MrSw, single model)"  # results/published.csv
    provenance: ClassVar[str] = "port of mesnico/TERAN"
    tasks: ClassVar[frozenset[str]] = frozenset({"text-image", "image-text"})

    def __init__(
        self,
        profile: str = "tiny",
        alignment_mode: str = "MrSw",
        pos_encoding: str = "concat-and-process",
        shared_transformer: bool = False,
        word_span: str = "drop_period",
        zero_pad_quirk: bool = False,
        global_aux_loss: bool = False,
        mask_same_image: bool = False,
        bert_path: str = "bert-base-uncased",
        rerank_k: int | None = None,
        optim: OptimConfig | None = None,
        loss_weights: dict[str, float] | None = None,
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        hp = resolve_profile(PROFILES, profile, merge_overrides(overrides, fields), "teran")
        for value, allowed, what in [
            (alignment_mode, POOLINGS, "alignment_mode"),
            (pos_encoding, POS_ENCODINGS, "pos_encoding"),
            (word_span, WORD_SPANS, "word_span"),
            (hp.score_dtype, SCORE_DTYPES, "score_dtype"),
            (hp.text_encoder, TOKEN_TEXT_ENCODERS, "text_encoder"),
        ]:
            if value not in allowed:
                raise ValueError(f"teran: {what} {value!r} is not one of {', '.join(allowed)}")
        if rerank_k is not None and not global_aux_loss:
            raise ValueError(
                "teran: rerank_k shortlists by the position-0 globals, which only global_aux_loss=true trains"
            )
        super().__init__(
            profile=profile,
            optim=optim or hp.optim,
            loss_weights=loss_weights,
            rerank_k=rerank_k,
            store_dtype=hp.store_dtype,
        )
        self.save_hyperparameters()
        self.hp = hp
        self.alignment_mode, self.pos_encoding, self.word_span = alignment_mode, pos_encoding, word_span
        self.shared_transformer, self.zero_pad_quirk = shared_transformer, zero_pad_quirk
        self.global_aux_loss, self.mask_same_image = global_aux_loss, mask_same_image
        self.bert_path = bert_path
        self.text_encoder: nn.Module | None = None
        self.cnn: nn.Module | None = None  # the region extractor over pixels; None on region features
        self.pos: nn.Module | None = None
        self.effective_pos = pos_encoding  # `none` on data without boxes (precomp)
        self.region_source = ""  # grid, roi, precomp or butd; recorded in result.json
        self.sum_warmup = 0  # summed-hinge epochs, resolved from the profile and the data at build
        self.register_buffer("punct", torch.zeros(0, dtype=torch.bool), persistent=False)

    # -- building --------------------------------------------------------------------------------------------
    def build(self, data: DataInfo) -> None:
        """Tokenizer and text encoder, region extractor (pixels) or region width (features), transformers."""
        if self.text_encoder is not None:
            return
        hp = self.hp
        tokenizer, self.text_encoder = build_token_text(hp, self.bert_path, data)
        text_width = int(self.text_encoder.out_dim)
        self.punct = punctuation_table(tokenizer)
        self.cnn, width, self.region_source = region_extractor(data, hp.image, hp.roi_boxes)
        self.effective_pos = "none" if data.feature_source == "precomp" else self.pos_encoding
        self.sum_warmup = summed_hinge_epochs(hp.sum_warmup_epochs, data.family)
        self.pos = POS_ENCODINGS[self.effective_pos](width)
        joint = (hp.embed_dim, hp.joint_layers, hp.heads, hp.joint_ff, hp.dropout, "joint")
        self.visual_transformer = te_stack(
            width, hp.visual_layers, hp.heads, hp.visual_ff, hp.dropout, "region"
        )
        self.img_proj = nn.Linear(width, hp.embed_dim)
        self.cap_proj = nn.Linear(text_width, hp.embed_dim)
        self.text_transformer = te_stack(*joint)
        self.image_transformer = None if self.shared_transformer else te_stack(*joint)
        self.processor = hp.image.processor(tokenizer, data.tiny_image_size)  # type: ignore[arg-type]

    # -- encoders --------------------------------------------------------------------------------------------
    def text_sets(self, text: Text) -> Sets:
        """Unit word vectors of the scored window (zero outside the words), word mask, [CLS] global."""
        assert self.text_encoder is not None, "call build(datamodule.info()) first"
        ids, valid = text_inputs(text)
        x = self.cap_proj(self.text_encoder(text).tokens)
        x = F.normalize(self.text_transformer(x, src_key_padding_mask=~valid), dim=-1)
        tok, words = scored_tokens(x, word_mask(ids, valid, self.word_span, self.punct), self.word_span)
        return Sets(tok=tok, mask=words, glob=x[:, 0])

    def regions_of(self, visual: Visual) -> tuple[Tensor, Tensor | None, Tensor]:
        """(features [B, R, D], boxes [B, R, 4] or None, Bool mask [B, R]) from region data or pixels."""
        return region_inputs(visual, self.cnn, self.region_source, self.name)

    def image_sets(self, visual: Visual) -> Sets:
        """Unit region vectors [B, R, d] (zero slot dropped, zero where masked), mask, slot-0 global."""
        x, boxes, mask = self.regions_of(visual)
        b, _, dim = x.shape
        x = torch.cat([x.new_zeros(b, 1, dim), x], dim=1)  # the zero slot (reference: reserved as CLS)
        full = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        if self.pos is not None:
            if boxes is None:
                raise ValueError(f"teran: pos_encoding {self.effective_pos!r} needs region boxes; use 'none'")
            x = self.pos(x, torch.cat([boxes.new_zeros(b, 1, 4), boxes], dim=1).to(x.dtype))
        x = self.img_proj(self.visual_transformer(x, src_key_padding_mask=~full))
        joint = self.text_transformer if self.image_transformer is None else self.image_transformer
        x = F.normalize(joint(x, src_key_padding_mask=~full), dim=-1)
        return Sets(tok=zero_padding(x[:, 1:], mask), mask=mask, glob=x[:, 0])

    # -- training --------------------------------------------------------------------------------------------
    def losses(self, batch: PairBatch) -> dict[str, Tensor]:
        img, txt = self.image_sets(batch.visual), self.text_sets(batch.text)
        S = self.align(txt.tok, txt.mask, img.tok, img.mask).T  # rows images, columns captions
        same = batch.label[:, None] == batch.label[None, :] if self.mask_same_image else None
        hardest = self.current_epoch >= self.sum_warmup
        terms = {"hinge": hardest_negative_triplet(S, self.hp.margin, hardest, positive_mask=same)}
        if self.global_aux_loss:
            G = img.glob @ txt.glob.T
            terms["global_hinge"] = hardest_negative_triplet(G, self.hp.margin, hardest, positive_mask=same)
        return terms

    def align(self, words: Tensor, wmask: Tensor, regions: Tensor, rmask: Tensor) -> Tensor:
        """[n_captions, n_images] pooled alignments in this model's mode."""
        return alignment_scores(
            words, wmask, regions, rmask, self.alignment_mode, self.zero_pad_quirk, self.hp.score_chunk
        )

    def configure_optimizers(self) -> Any:
        """The base optimiser and schedule; `warmup_steps` becomes the schedule's warm-up (TERAN's 1,000
        iterations on F30K, starting from lr / warmup_steps as pytorch_warmup's LinearWarmup)."""
        if self.hp.warmup_steps > 0:
            _, per_epoch = self._schedule_steps()
            steps = self.hp.warmup_steps
            self.optim_cfg = replace(
                self.optim_cfg, warmup_epochs=(steps + 0.5) / per_epoch, warmup_start=1.0 / steps
            )
        return super().configure_optimizers()

    @property
    def grad_clip_norm(self) -> float:
        """The recipe's gradient-norm clip (`grad_clip`, 2.0); the trainer's setting wins when given."""
        return self.hp.grad_clip

    # -- evaluation ------------------------------------------------------------------------------------------
    def encode_queries(self, batch: TextBatch) -> Features:
        s = self.text_sets(batch.text)
        return Features(index=batch.index, glob=s.glob.float(), tok=self.stored(s.tok), mask=s.mask)

    def encode_gallery(self, batch: VisualBatch) -> Features:
        s = self.image_sets(batch.visual)
        tok, mask = s.tok, s.mask
        if self.region_source != "grid":  # region counts may vary: a fixed slot count for gathering
            tok, mask = self.fixed_slots(tok, mask, self.hp.max_regions)
        return Features(index=batch.index, glob=s.glob.float(), tok=self.stored(tok), mask=mask)

    def fine_scores(self, q: Features, g: Features) -> Tensor:
        """Pairwise alignment of captions x images (with `rerank_k`, `score` is the globals' instead)."""
        assert q.tok is not None and q.mask is not None and g.tok is not None and g.mask is not None
        if self.hp.score_buckets and not self.zero_pad_quirk:
            hp = self.hp
            return bucketed_alignment_matrix(
                q.tok, q.mask, g.tok, g.mask, self.alignment_mode, hp.score_chunk, hp.score_dtype
            )
        (words, wmask), (regions, rmask) = self._cut(q.tok, q.mask), self._cut(g.tok, g.mask)
        return self.align(words, wmask, regions, rmask)

    def fine_pairs(self, q: Features, g: Features) -> Tensor:
        """Pooled alignment of aligned pairs (the re-rank scorer of the shortlist)."""
        assert q.tok is not None and q.mask is not None and g.tok is not None and g.mask is not None
        (words, wmask), (regions, rmask) = self._cut(q.tok, q.mask), self._cut(g.tok, g.mask)
        hp = self.hp
        return alignment_scores(
            words, wmask, regions, rmask, self.alignment_mode, self.zero_pad_quirk, hp.score_chunk, "pairs"
        )

    def _cut(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Stored sets cut after their last valid slot before scoring (exact: later slots are masked out of
        every pooling; not with the zero-padding quirk, where padding takes part). Evaluation only: the cut
        reads the mask on the host, a sync the training step avoids."""
        return (x, mask) if self.zero_pad_quirk else cut_padding(x, mask)

    def run_details(self) -> dict[str, Any]:
        """The alignment and region settings this run used."""
        return {
            "teran": {
                "alignment_mode": self.alignment_mode,
                "pos_encoding": self.effective_pos,
                "regions": self.region_source,
                "word_span": self.word_span,
                "zero_pad_quirk": self.zero_pad_quirk,
                "shared_transformer": self.shared_transformer,
                "global_aux_loss": self.global_aux_loss,
                "sum_warmup_epochs": warmup_label(self.sum_warmup),
            },
        }
