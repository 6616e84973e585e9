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

from .alignment import (
    POOLINGS,
    SCORE_DTYPES,
    alignment_matrix,
    alignment_pairs,
    alignment_scores,
    bucketed_alignment_matrix,
    pool_alignments,
)
from .config import PROFILES, TERANConfig
from .module import TERAN, Sets, te_stack

__all__ = [
    "POOLINGS",
    "PROFILES",
    "SCORE_DTYPES",
    "TERAN",
    "Sets",
    "TERANConfig",
    "alignment_matrix",
    "alignment_pairs",
    "alignment_scores",
    "bucketed_alignment_matrix",
    "pool_alignments",
    "te_stack",
]
