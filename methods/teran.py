"""TERAN: transformer encoder reasoning and alignment network (Messina et al., ACM TOMM 2021;
arXiv 2008.05231), a port of mesnico/TERAN (docs/methods.md §2).

Regions and words are encoded independently (so both sides can be indexed) and a parameter-free pooling of
the region-word alignments A_rw = ⟨v_r, t_w⟩ scores each pair; training is the hardest-negative hinge on the
batch matrix of those pooled scores.

[code] (checked against mesnico/TERAN `models/teran.py`, `models/visual.py`, `models/text.py`,
`models/utils.py`, `models/loss.py`, `data.py`, `evaluation.py`, `train.py`, `configs/teran_*_MrSw.yaml`):
- text: BERT cut to its first 6 layers (fine-tuned) -> Linear 768 -> 1024 -> 2 post-LN ReLU
  TransformerEncoderLayers (d 1024, 4 heads, FF 2048, dropout 0.1) -> L2 per token;
- image: a zero slot (zero features, zero box) before the 36 bottom-up regions -> `concat-and-process`
  ([x1, y1, x2, y2, area] appended, Linear, ReLU, Linear) -> 4 TE layers at the feature width (2048, 4 heads,
  FF 2048) -> Linear 2048 -> 1024 -> 2 TE layers (not shared with the text ones unless `shared_transformer`)
  -> L2 per region; the position-0 outputs are the globals of the `matching` loss (`global_aux_loss`);
- alignment over regions 1..R (zero slot dropped) and words 1..len-3 (`word_span="reference"`); pooling
  modes MrSw (default), MwSr, symm, MrAVGw; the hinge with α = 0.2 and hardest negatives, summed over the
  batch, rows images; captions of the same image in a batch are negatives (`mask_same_image` changes it);
- paper recipe: Adam, lr 1e-5 for every parameter (BERT included), StepLR 20 epochs / 0.1, 30 epochs,
  gradient clipping 2.0, batch 40 (COCO) / 30 (F30K), linear warm-up over 1,000 iterations on F30K only
  (`warmup_steps`; experiments/configs/experiment/teran_{coco,f30k}.yaml).

Where we deviate from the reference code, its behaviour is an option:
- `word_span`: the code scores words 1..len-3, dropping [CLS], [SEP] and the token before [SEP] (normally
  the final "."), which loses a real word when a caption has no final punctuation (docs/protocols.md §6.7).
  The default `drop_period` drops that token only when it is punctuation; `reference` reproduces the code;
  `all_words` keeps it always.
- `zero_pad_quirk`: padded words and regions are excluded from max and sum here; the code zero-fills them
  before the max, which changes MwSr (and symm) for captions shorter than the padded length. The option
  reproduces it, as in the reference evaluation (every caption padded to 88 word-pieces).

Our reading [inf]:
- captions are padded to `max_len` = 88 word-pieces (the reference evaluation buffer) and truncated beyond
  it, where the reference training pads to the batch maximum and never truncates (the attention masks make
  that padding irrelevant, except under `zero_pad_quirk`, which in training then also reaches the longest
  caption of a batch);
- test time stores token and region sets in bf16 (`store_dtype`) and scores in fp32, in chunks of queries x
  gallery items bounded by `score_chunk` elements, never the full [n_q, n_g, L, R] tensor; captions are
  grouped by length and region sets by count, each group scored at its own length (`score_buckets`), so no
  padded slot is multiplied (exact; the padded path serves `zero_pad_quirk`, where padding takes part);
  `score_dtype=bfloat16` multiplies the stored bf16 sets in bf16 (faster, approximate: benchmarks/README.md);
- `rerank_k` (a shortlist by the position-0 globals, re-scored by the alignment) needs `global_aux_loss`,
  the coarse score the model was trained for; runs that use it are a variant;
- the tiny profile: TinyText words (vocabulary from the training captions) -> Linear -> 2 TE layers at d 64;
  TinyCNN regions (its grid cells with their cell boxes, or RoI averages over the boxes the data ships with
  the images, `roi_boxes`) -> zero slot -> concat-and-process -> 2 TE layers at 64 -> Linear -> 2 TE layers;
  AdamW 1e-3 with a cosine schedule, as every tiny profile; its first epoch sums the hinge over all
  negatives, then takes the hardest (`sum_warmup_epochs`, woodfrog/vse_infty's `vse_mean_warmup_epochs`):
  trained from scratch with the hardest negative only, the scores collapsed (measured on synth-scenes with
  400 training images, 8 epochs, seed 0: the loss settled near 2·B·α and t2i R@1 was 2.0, chance 2.0; with
  one such epoch t2i R@1 was 29.6). On person data (near-duplicate galleries) one summed epoch was not
  enough: the hardest negative then collapsed the scores again (synth-person, seed 0: R1 1.56 = chance), so
  there the tiny profile sums the hinge in every epoch (R1 4.88), `fgbench.losses.warmup.summed_hinge_epochs`;
  result.json records the warm-up. Raw images take this region extractor in both profiles; region
  features (`precomp`, `butd`) go straight into the visual transformer;
- `precomp` features have no boxes: the positional encoding is forced to `none` and recorded in result.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgbench.data.batches import PairBatch, Text, TextBatch, Visual, VisualBatch
from fgbench.data.module import RetrievalDataModule, region_dim
from fgbench.encoders import MethodProcessor, TinyCNN, build_image_encoder
from fgbench.encoders.layers import text_inputs, zero_padding
from fgbench.encoders.regions import POS_ENCODINGS, region_inputs
from fgbench.encoders.token_text import TOKEN_TEXT_ENCODERS, TokenTextSizes, build_token_text
from fgbench.encoders.word_windows import WORD_SPANS, punctuation_table, scored_tokens, word_mask
from fgbench.evaluation import EvalResult, EvalSpec
from fgbench.features import Features, cut_padding, length_buckets
from fgbench.losses import hardest_negative_triplet
from fgbench.losses.warmup import summed_hinge_epochs, warmup_label
from fgbench.optim import OptimConfig
from fgbench.pairwise import PairwiseMethod, chunked_matrix, chunked_pairs
from fgbench.profiles import merge_overrides, resolve_profile
from fgbench.registry import register_method

# -- alignment pooling (docs/methods.md §2 "Alignment") ------------------------------------------------------


def _words_max_regions(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    """Σ_w max_r A_rw over valid words: the max over regions per word, summed. A [..., W, R]."""
    m = A.masked_fill(~rmask.unsqueeze(-2), fill).amax(-1)
    keep = wmask & (rmask.any(-1, keepdim=True) | (fill == 0.0))
    return m.masked_fill(~keep, 0.0).sum(-1)


def _regions_max_words(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    """Σ_r max_w A_rw over valid regions: the max over words per region, summed. A [..., W, R]."""
    m = A.masked_fill(~wmask.unsqueeze(-1), fill).amax(-2)
    keep = rmask & (wmask.any(-1, keepdim=True) | (fill == 0.0))
    return m.masked_fill(~keep, 0.0).sum(-1)


def _symm(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    return _words_max_regions(A, wmask, rmask, fill) + _regions_max_words(A, wmask, rmask, fill)


def _mravgw(A: Tensor, wmask: Tensor, rmask: Tensor, fill: float) -> Tensor:
    n_words = wmask.sum(-1).clamp_min(1).to(A.dtype)
    return _words_max_regions(A, wmask, rmask, fill) / n_words


Pooling = Callable[[Tensor, Tensor, Tensor, float], Tensor]
# (A [..., W, R], word mask [..., W], region mask [..., R], fill of masked entries) -> [...] scores
POOLINGS: dict[str, Pooling] = {
    "MrSw": _words_max_regions,
    "MwSr": _regions_max_words,
    "symm": _symm,
    "MrAVGw": _mravgw,
}


def pool_alignments(
    A: Tensor, wmask: Tensor, rmask: Tensor, mode: str, zero_pad_quirk: bool = False
) -> Tensor:
    """Pool region-word alignments A [..., W, R] (masks broadcastable to [..., W] and [..., R]) to scores.

    Masked words and regions are excluded from max and sum; with `zero_pad_quirk` they count as 0 in the
    max (mesnico/TERAN's `masked_fill_(mask, 0)` before it). An empty set scores 0.
    """
    if mode not in POOLINGS:
        raise ValueError(f"teran: alignment_mode {mode!r} is not one of {', '.join(POOLINGS)}")
    return POOLINGS[mode](A, wmask, rmask, 0.0 if zero_pad_quirk else float("-inf"))


def alignment_matrix(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    region_mask: Tensor,
    mode: str = "MrSw",
    zero_pad_quirk: bool = False,
    chunk: int = 1 << 25,
) -> Tensor:
    """[n_q, n_g] fp32 pooled alignments of captions (words [n_q, W, e]) x images (regions [n_g, R, e]).

    Computed in chunks of queries x gallery items so that one chunk's alignment tensor holds at most
    `chunk` elements (the full [n_q, n_g, W, R] tensor is never built); differentiable, autocast off.
    """
    n_q, W, _ = words.shape
    n_g, R, _ = regions.shape

    def block(i: slice, j: slice) -> Tensor:
        A = torch.einsum("qwe,gre->qgwr", words[i].float(), regions[j].float())
        return pool_alignments(A, word_mask[i, None, :], region_mask[None, j], mode, zero_pad_quirk)

    with torch.autocast(words.device.type, enabled=False):
        return chunked_matrix(block, n_q, n_g, W * R, chunk, words.device)


def alignment_pairs(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    region_mask: Tensor,
    mode: str = "MrSw",
    zero_pad_quirk: bool = False,
    chunk: int = 1 << 25,
) -> Tensor:
    """[n] pooled alignments of the aligned pairs (words[i], regions[i]); the same function as the matrix."""

    def pairs(i: slice) -> Tensor:
        A = torch.einsum("nwe,nre->nwr", words[i].float(), regions[i].float())
        return pool_alignments(A, word_mask[i], region_mask[i], mode, zero_pad_quirk)

    with torch.autocast(words.device.type, enabled=False):
        return chunked_pairs(pairs, len(words), words.shape[1] * regions.shape[1], chunk, words.device)


# -- scoring real slots only: sets grouped by length (evaluation) -------------------------------------------


SCORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _align_block(
    words: Tensor, wmask: Tensor, regions: Tensor, rmask: Tensor, mode: str, dtype: torch.dtype
) -> Tensor:
    """[n_q, n_g] pooled alignments of one chunk, as one matmul [n_q W, e] x [e, n_g R]."""
    n_q, W, e = words.shape
    n_g, R, _ = regions.shape
    A = torch.mm(words.reshape(n_q * W, e).to(dtype), regions.reshape(n_g * R, e).to(dtype).T)
    A = A.view(n_q, W, n_g, R).permute(0, 2, 1, 3).float()  # [n_q, n_g, W, R]
    return pool_alignments(A, wmask[:, None, :], rmask[None], mode)


def _align_chunks(
    words: Tensor, wmask: Tensor, regions: Tensor, rmask: Tensor, mode: str, dtype: torch.dtype, chunk: int
) -> Tensor:
    """[n_q, n_g] `_align_block` over chunks of at most `chunk` alignment elements."""

    def block(i: slice, j: slice) -> Tensor:
        return _align_block(words[i], wmask[i], regions[j], rmask[j], mode, dtype)

    per_pair = words.shape[1] * regions.shape[1]
    return chunked_matrix(block, len(words), len(regions), per_pair, chunk, words.device)


def _packed_words_max_regions(
    words: Tensor, word_mask: Tensor, regions: Tensor, out: Tensor, chunk: int, dtype: torch.dtype
) -> None:
    """Add Σ_w max_r A_rw of every caption x image to `out` [n_q, n_g], the captions' real words packed into
    one [n_words, e] matrix (no padded word is multiplied) and every region of `regions` [n_g, R, e] valid;
    the per-word maxima are summed per caption by `index_add_`."""
    rows_of, slots = word_mask.nonzero(as_tuple=True)
    n_w, (n_g, R, e) = len(rows_of), regions.shape
    if n_w == 0:
        return
    packed = words[rows_of, slots].to(dtype)  # [n_words, e]
    cols = max(1, min(n_g, chunk // (R * min(n_w, 256))))
    rows = max(1, min(n_w, chunk // (R * cols)))
    for j in range(0, n_g, cols):
        gal = regions[j : j + cols].to(dtype).reshape(-1, e)  # converted once per gallery chunk
        part = out.new_zeros(len(out), min(cols, n_g - j))
        for i in range(0, n_w, rows):
            m = torch.mm(packed[i : i + rows], gal.T).view(-1, part.shape[1], R).amax(-1)
            part.index_add_(0, rows_of[i : i + rows], m.float())
        out[:, j : j + cols] += part


def bucketed_alignment_matrix(
    words: Tensor,
    word_mask: Tensor,
    regions: Tensor,
    region_mask: Tensor,
    mode: str = "MrSw",
    chunk: int = 1 << 25,
    score_dtype: str = "float32",
) -> Tensor:
    """`alignment_matrix` (without the zero-padding quirk) over real slots only, for evaluation.

    Images are grouped by region extent (`length_buckets`). MrSw and MrAVGw over groups whose regions are all
    valid pack the captions' real words into one matrix (`_packed_words_max_regions`); the other modes
    group captions by word extent too and score each pair of groups at its own lengths. Chunks hold at
    most `chunk` alignment elements; results are scattered back. Equal to the padded computation up to float
    summation order (fp32); `score_dtype="bfloat16"` multiplies in bf16 (the stored dtype) with a bf16
    alignment tensor, pooled in fp32. For evaluation: it reads the masks on the host.
    """
    if score_dtype not in SCORE_DTYPES:
        raise ValueError(f"teran: score_dtype {score_dtype!r} is not one of {', '.join(SCORE_DTYPES)}")
    if mode not in POOLINGS:
        raise ValueError(f"teran: alignment_mode {mode!r} is not one of {', '.join(POOLINGS)}")
    dtype = SCORE_DTYPES[score_dtype]
    n_q, n_g = len(words), len(regions)
    out = torch.zeros(n_q, n_g, dtype=torch.float32, device=words.device)
    caption_groups: list[tuple[Tensor, int]] | None = None
    with torch.autocast(words.device.type, enabled=False):
        for gi, R in length_buckets(region_mask):
            if len(gi) == n_g:  # one group (indices in order): a view, not a copy of the gallery
                r, rm = regions[:, :R], region_mask[:, :R]
            else:
                r, rm = regions[gi, :R], region_mask[gi, :R]
            if mode in ("MrSw", "MrAVGw") and bool(rm.all()):
                part = out.new_zeros(n_q, len(gi))
                _packed_words_max_regions(words, word_mask, r, part, chunk, dtype)
                if mode == "MrAVGw":
                    part /= word_mask.sum(1, keepdim=True).clamp_min(1)
                out[:, gi] = part
                continue
            if caption_groups is None:
                caption_groups = length_buckets(word_mask)
            for qi, W in caption_groups:
                block = _align_chunks(words[qi, :W], word_mask[qi, :W], r, rm, mode, dtype, chunk)
                out[qi[:, None], gi[None, :]] = block
    return out


# -- configuration -----------------------------------------------------------------------------------------


@dataclass
class TERANConfig(TokenTextSizes):
    """Sizes and recipe of one TERAN profile (the switches of docs/methods.md §2 are `TERAN` arguments); its
    first fields, the text encoder's, are `TokenTextSizes`'s."""

    image_encoder: str = "tiny_cnn"  # pixels -> regions (grid cells, or RoI averages over the data's boxes)
    image_kwargs: dict[str, Any] = field(default_factory=dict)  # its arguments
    image_size: tuple[int, int] | None = None  # processor (H, W); None: the DataModule's tiny size
    roi_boxes: bool = True  # tiny_cnn: RoI-average its map over the boxes served with the images
    max_regions: int = 36  # region sets from data or boxes are padded to this many slots at test time
    visual_layers: int = 2  # TE layers at the region-feature width (reference: 4 at 2048)
    visual_ff: int = 128  # their feed-forward width (reference: 2048)
    embed_dim: int = 64  # joint space d (reference: 1024)
    joint_layers: int = 2  # TE layers after the projection to d, per modality (reference: 2)
    joint_ff: int = 128  # their feed-forward width (reference: 2048)
    heads: int = 4  # attention heads of every TE layer (reference: 4)
    dropout: float = 0.1  # dropout of every TE layer (reference: 0.1)
    margin: float = 0.2  # α of the hinge
    sum_warmup_epochs: int | None = None  # summed-hinge (VSE0) epochs first; None: per task family (vsepp)
    store_dtype: str = "bfloat16"  # dtype of the token / region sets kept for scoring (computed in fp32)
    score_chunk: int = 1 << 25  # max elements of one [b_q, b_g, W, R] alignment chunk
    score_buckets: bool = True  # evaluation scores real slots only, sets grouped by length (exact)
    score_dtype: str = "float32"  # evaluation matmul dtype: float32 (exact) or bfloat16 (faster, approximate)
    optimizer: str = "adamw"  # fgbench.optim OPTIMIZERS key
    lr: float = 1e-3  # learning rate (every parameter)
    weight_decay: float = 0.01  # weight decay
    schedule: str = "cosine"  # fgbench.optim SCHEDULES key
    step_epochs: int = 20  # "step" schedule: epochs between decays
    gamma: float = 0.1  # "step" schedule: decay factor
    warmup_steps: int = 0  # linear warm-up over this many optimiser steps (F30K recipe: 1000)
    grad_clip: float = 2.0  # gradient-norm clipping (0: off)


PROFILES: dict[str, TERANConfig] = {
    "tiny": TERANConfig(),
    "paper": TERANConfig(
        text_encoder="bert",
        max_len=88,
        visual_layers=4,
        visual_ff=2048,
        embed_dim=1024,
        joint_layers=2,
        joint_ff=2048,
        optimizer="adam",
        lr=1e-5,
        weight_decay=0.0,
        schedule="step",
        step_epochs=20,
        sum_warmup_epochs=0,
    ),
}


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

    name: ClassVar[str] = "teran"
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
            optim=optim or self._optim(hp),
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

    @staticmethod
    def _optim(hp: TERANConfig) -> OptimConfig:
        return OptimConfig.from_profile(hp)

    # -- building --------------------------------------------------------------------------------------------
    def build(self, dm: RetrievalDataModule) -> None:
        """Tokenizer and text encoder, region extractor (pixels) or region width (features), transformers."""
        if self.text_encoder is not None:
            return
        hp = self.hp
        tokenizer, self.text_encoder = build_token_text(hp, self.bert_path, dm)
        text_width = int(self.text_encoder.out_dim)
        self.punct = punctuation_table(tokenizer)
        width = region_dim(dm)
        source = getattr(dm, "feature_source", "images")
        if width is None:
            self.cnn = build_image_encoder(hp.image_encoder, **hp.image_kwargs)
            width = int(self.cnn.out_dim)
            self.region_source = "roi" if self._roi(dm) else "grid"
        else:
            self.region_source = source
        self.effective_pos = "none" if source == "precomp" else self.pos_encoding
        self.sum_warmup = summed_hinge_epochs(hp.sum_warmup_epochs, dm)
        self.pos = POS_ENCODINGS[self.effective_pos](width)
        joint = (hp.embed_dim, hp.joint_layers, hp.heads, hp.joint_ff, hp.dropout, "joint")
        self.visual_transformer = te_stack(
            width, hp.visual_layers, hp.heads, hp.visual_ff, hp.dropout, "region"
        )
        self.img_proj = nn.Linear(width, hp.embed_dim)
        self.cap_proj = nn.Linear(text_width, hp.embed_dim)
        self.text_transformer = te_stack(*joint)
        self.image_transformer = None if self.shared_transformer else te_stack(*joint)
        self.processor = MethodProcessor(
            image_size=hp.image_size or dm.tiny_image_size,
            tokenizer=tokenizer,  # type: ignore[arg-type]
        )

    def _roi(self, dm: RetrievalDataModule) -> bool:
        return bool(self.hp.roi_boxes and getattr(dm, "with_boxes", False) and isinstance(self.cnn, TinyCNN))

    # -- encoders --------------------------------------------------------------------------------------------
    def text_sets(self, text: Text) -> Sets:
        """Unit word vectors of the scored window (zero outside the words), word mask, [CLS] global."""
        assert self.text_encoder is not None, "call build(datamodule) first"
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
        return alignment_matrix(
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
        return alignment_pairs(
            words, wmask, regions, rmask, self.alignment_mode, self.zero_pad_quirk, self.hp.score_chunk
        )

    def _cut(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Stored sets cut after their last valid slot before scoring (exact: later slots are masked out of
        every pooling; not with the zero-padding quirk, where padding takes part). Evaluation only: the cut
        reads the mask on the host, a sync the training step avoids."""
        return (x, mask) if self.zero_pad_quirk else cut_padding(x, mask)

    def evaluate_features(self, q: Features, g: Features, spec: EvalSpec) -> EvalResult:
        """The evaluator's result, with the alignment and region settings this run used."""
        result = super().evaluate_features(q, g, spec)
        result.details["teran"] = {
            "alignment_mode": self.alignment_mode,
            "pos_encoding": self.effective_pos,
            "regions": self.region_source,
            "word_span": self.word_span,
            "zero_pad_quirk": self.zero_pad_quirk,
            "shared_transformer": self.shared_transformer,
            "global_aux_loss": self.global_aux_loss,
            "sum_warmup_epochs": warmup_label(self.sum_warmup),
        }
        return result
