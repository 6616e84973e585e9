"""TERAN (methods/teran/; docs/methods.md §2): the unit tests of §2 (every pooling mode against brute force
on ragged inputs, and against a literal port of mesnico/TERAN's `AlignmentContrastiveLoss` for the padding
quirk; invariance to padding, the zero slot, [CLS] and the dropped final tokens; the hinge against brute
force; unit norms), the shared checks of docs/methods.md §0 on the region variants (grid with bf16 storage,
RoI, precomp, butd; the default model on each synthetic dataset: test_contract.py), the global-shortlist
variant, runs through the CLI on synthetic data and on the official-format fixtures, the paper profile
built offline from a tiny random BERT folder, and the paper-table experiment configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from method_checks import (
    BERT_VOCAB,
    MODERATE_SIZES,
    PRECOMP_SIZES,
    assert_block_invariant,
    assert_encoding_batch_independent,
    attach,
    config_fit,
    encoded,
    eval_batches,
    first_batch,
    itm_fixture_run,
    karpathy_boxes_run,
    loss_fell,
    moderate_fit,
    paper_config,
    shared_checks,
    synth_args,
    synth_dm,
)

from datamodules.itm import COCODataModule, Flickr30KDataModule
from fgbench.data.batches import Text
from fgbench.data.module import RetrievalDataModule
from fgbench.encoders.word_windows import punctuation_table, scored_tokens, word_mask
from fgbench.evaluation import EvalSpec
from fgbench.features import Features, length_buckets, slots_used
from fgbench.losses import hardest_negative_triplet
from fgbench.registry import METHODS
from methods.teran import (
    POOLINGS,
    TERAN,
    alignment_matrix,
    alignment_pairs,
    bucketed_alignment_matrix,
)

from fixtures import itm as fx

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
MODES = sorted(POOLINGS)


def built(dm: RetrievalDataModule, **kw: Any) -> TERAN:
    L.seed_everything(0)
    return attach(TERAN(**kw), dm)  # type: ignore[return-value]


# -- pooling against brute force (unit test 1) ---------------------------------------------------------------


def ragged(
    n: int, t: int, e: int, gen: torch.Generator, min_len: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors [n, t, e] and a mask of a random number of leading valid positions (some rows empty when
    min_len is 0), with garbage at the masked positions."""
    x = F.normalize(torch.randn(n, t, e, generator=gen), dim=-1)
    lengths = torch.randint(min_len, t + 1, (n,), generator=gen)
    return x, torch.arange(t)[None, :] < lengths[:, None]


def brute(words: torch.Tensor, wm: torch.Tensor, regions: torch.Tensor, rm: torch.Tensor, mode: str) -> float:
    """One pair by loops over its valid words and regions (empty max = 0)."""
    W = [w for w in range(len(wm)) if wm[w]]
    R = [r for r in range(len(rm)) if rm[r]]
    a = {(w, r): float(words[w] @ regions[r]) for w in W for r in R}
    mrsw = sum(max(a[w, r] for r in R) for w in W) if R else 0.0
    mwsr = sum(max(a[w, r] for w in W) for r in R) if W else 0.0
    return {"MrSw": mrsw, "MwSr": mwsr, "symm": mrsw + mwsr, "MrAVGw": mrsw / max(1, len(W))}[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk", [1, 100, 1 << 25])
def test_pooling_equals_brute_force_on_ragged_inputs(mode: str, chunk: int) -> None:
    gen = torch.Generator().manual_seed(1)
    words, wm = ragged(5, 7, 6, gen)
    regions, rm = ragged(4, 5, 6, gen)
    got = alignment_matrix(words, wm, regions, rm, mode, chunk=chunk)
    want = torch.tensor(
        [[brute(words[i], wm[i], regions[j], rm[j], mode) for j in range(4)] for i in range(5)]
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    idx = torch.arange(4)
    pairs = alignment_pairs(words[idx], wm[idx], regions[idx.flip(0)], rm[idx.flip(0)], mode, chunk=chunk)
    torch.testing.assert_close(pairs, want[idx, idx.flip(0)], atol=1e-5, rtol=1e-5)


def test_symm_and_mravgw_are_sums_and_ratios_of_mrsw_and_mwsr() -> None:
    gen = torch.Generator().manual_seed(2)
    words, wm = ragged(6, 9, 8, gen, min_len=1)
    regions, rm = ragged(3, 4, 8, gen, min_len=1)
    s = {m: alignment_matrix(words, wm, regions, rm, m) for m in MODES}
    torch.testing.assert_close(s["symm"], s["MrSw"] + s["MwSr"])
    torch.testing.assert_close(s["MrAVGw"] * wm.sum(1, keepdim=True).float(), s["MrSw"])


def test_pooling_is_differentiable_and_chunked_gradients_agree() -> None:
    gen = torch.Generator().manual_seed(3)
    words, wm = ragged(4, 6, 5, gen, min_len=1)
    regions, rm = ragged(4, 3, 5, gen, min_len=1)
    grads = []
    for chunk in (1, 1 << 25):
        w = words.clone().requires_grad_(True)
        alignment_matrix(w, wm, regions, rm, "symm", chunk=chunk).sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0][~wm].abs().sum() == 0  # masked words get no gradient


def with_holes(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Some valid slots masked inside the rows (as `drop_period` masks a caption's final period)."""
    return x, m & (torch.rand(m.shape, generator=gen) > 0.2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk", [7, 1 << 25])
@pytest.mark.parametrize("full_regions", [True, False])
def test_bucketed_scoring_equals_the_padded_one(mode: str, chunk: int, full_regions: bool) -> None:
    """Captions of 0..20 words and region sets of 1..36 (or all 36) scored per length group equal the padded
    computation to 1e-5, garbage in the padded slots and holes in the masks included."""
    gen = torch.Generator().manual_seed(11)
    words, wm = with_holes(*ragged(40, 20, 16, gen), gen)
    regions, rm = ragged(13, 36, 16, gen, min_len=1)
    if full_regions:
        rm = torch.ones_like(rm)
    got = bucketed_alignment_matrix(words, wm, regions, rm, mode, chunk=chunk)
    want = alignment_matrix(words, wm, regions, rm, mode)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    buckets = length_buckets(wm)
    assert sorted(torch.cat([i for i, _ in buckets]).tolist()) == list(range(40))
    assert len(buckets) > 3  # the lengths really vary: several groups were scored
    model = TERAN(alignment_mode=mode).eval()
    q, g = (
        Features(index=torch.arange(40), tok=words, mask=wm),
        Features(index=torch.arange(13), tok=regions, mask=rm),
    )
    torch.testing.assert_close(model.score(q, g), want, rtol=1e-5, atol=1e-5)
    padded = TERAN(alignment_mode=mode, overrides={"score_buckets": False}).eval()
    torch.testing.assert_close(padded.score(q, g), want, rtol=1e-5, atol=1e-5)


def test_bf16_bucketed_scoring_is_close_to_fp32() -> None:
    """bf16 multiplication of unit vectors: each alignment off by at most ~2^-8, a score by ~words x that."""
    gen = torch.Generator().manual_seed(12)
    words, wm = ragged(30, 12, 32, gen, min_len=1)
    regions, rm = ragged(9, 10, 32, gen, min_len=1)
    exact = bucketed_alignment_matrix(words, wm, regions, rm, "MrSw")
    approx = bucketed_alignment_matrix(words, wm, regions, rm, "MrSw", score_dtype="bfloat16")
    assert (approx - exact).abs().max() <= 12 * 2**-7
    with pytest.raises(ValueError, match="score_dtype"):
        bucketed_alignment_matrix(words, wm, regions, rm, "MrSw", score_dtype="int8")


@pytest.mark.parametrize("mode", MODES)
def test_padding_slots_are_cut_before_scoring_and_change_nothing(mode: str) -> None:
    gen = torch.Generator().manual_seed(5)
    w, wm = ragged(5, 6, 8, gen, min_len=1)
    r, rm = ragged(4, 7, 8, gen, min_len=1)

    def pad(x: torch.Tensor, m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k more slots of garbage, masked out."""
        return torch.cat([x, torch.randn(len(x), k, 8)], 1), torch.cat([m, m.new_zeros(len(m), k)], 1)

    (wp, wmp), (rp, rmp) = pad(w, wm, 3), pad(r, rm, 29)  # 36 region slots, as boxes are stored
    assert slots_used(rmp) == slots_used(rm) <= 7 and slots_used(torch.zeros(2, 3, dtype=torch.bool)) == 1
    model = TERAN(alignment_mode=mode).eval()
    q, g = (
        Features(index=torch.arange(5), tok=wp, mask=wmp),
        Features(index=torch.arange(4), tok=rp, mask=rmp),
    )
    torch.testing.assert_close(model.score(q, g), alignment_matrix(w, wm, r, rm, mode))
    pairs = model.rescore_pairs(q.take(torch.arange(4)), g)
    torch.testing.assert_close(pairs, alignment_pairs(w[:4], wm[:4], r, rm, mode))


# -- the reference code, literally, for the padding quirk ----------------------------------------------------


def reference_similarity(
    im_set: torch.Tensor, s_seq: torch.Tensor, im_len: list[int], s_len: list[int], mode: str
):
    """mesnico/TERAN `AlignmentContrastiveLoss(aggregation=mode, return_similarity_mat=True)` on its padded
    tensors: im_set [B_i, 1 + R, e] with the zero slot, s_seq [B_c, L, e] with [CLS] ... [SEP] and padding;
    the lengths count the zero slot and the special tokens. Returns [B_i, B_c] (rows images)."""
    im_set, s_seq = im_set[:, 1:, :], s_seq[:, 1:-2, :]
    im_len, s_len = [n - 1 for n in im_len], [n - 3 for n in s_len]
    n_i, R, n_c, W = im_set.shape[0], im_set.shape[1], s_seq.shape[0], s_seq.shape[1]
    A = torch.matmul(
        im_set.unsqueeze(1).expand(-1, n_c, -1, -1),
        s_seq.unsqueeze(0).expand(n_i, -1, -1, -1).transpose(2, 3),
    )
    im_mask = torch.zeros(n_i, R, dtype=torch.bool)
    for m, n in zip(im_mask, im_len, strict=True):
        m[n:] = True
    s_mask = torch.zeros(n_c, W, dtype=torch.bool)
    for m, n in zip(s_mask, s_len, strict=True):
        m[n:] = True
    A = A.masked_fill(im_mask[:, None, :, None] | s_mask[None, :, None, :], 0)
    mrsw, mwsr = A.max(2)[0].sum(2), A.max(3)[0].sum(2)
    lengths = torch.tensor(s_len, dtype=torch.float32)[None, :]
    return {"MrSw": mrsw, "MwSr": mwsr, "symm": mrsw + mwsr, "MrAVGw": mrsw / lengths}[mode]


@pytest.mark.parametrize("mode", MODES)
def test_zero_pad_quirk_with_reference_span_reproduces_the_code(mode: str) -> None:
    gen = torch.Generator().manual_seed(4)
    n_c, T, n_i, R, e = 6, 10, 4, 5, 8
    text = F.normalize(torch.randn(n_c, T, e, generator=gen), dim=-1)
    s_len = [10, 7, 5, 9, 4, 6]  # with [CLS] and [SEP]; the first fills the buffer (no padding)
    valid = torch.arange(T)[None, :] < torch.tensor(s_len)[:, None]
    text = text * valid[..., None]  # the code's buffers are zero beyond each caption
    im_len = [6, 6, 4, 6]  # with the zero slot
    image = F.normalize(torch.randn(n_i, 1 + R, e, generator=gen), dim=-1)
    image = image * (torch.arange(1 + R)[None, :] < torch.tensor(im_len)[:, None])[..., None]
    ids = torch.randint(5, 50, (n_c, T), generator=gen)
    tok, wm = scored_tokens(
        text, word_mask(ids, valid, "reference", torch.zeros(0, dtype=torch.bool)), "reference"
    )
    rm = torch.arange(R)[None, :] < (torch.tensor(im_len) - 1)[:, None]
    want = reference_similarity(image, text, im_len, s_len, mode).T
    got = alignment_matrix(tok, wm, image[:, 1:], rm, mode, zero_pad_quirk=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if mode in ("MrSw", "MrAVGw"):  # max over full region sets: the quirk changes nothing
        regions_full = alignment_matrix(tok, wm, image[:, 1:], rm, mode)
        torch.testing.assert_close(regions_full[:, [0, 1, 3]], want[:, [0, 1, 3]], atol=1e-5, rtol=1e-5)


# -- what is scored (unit test 2) ----------------------------------------------------------------------------


def test_word_spans_and_punctuation() -> None:
    ids = torch.tensor([[101, 7, 8, 9, 102, 0], [101, 7, 8, 102, 0, 0]])  # [CLS] w w "." [SEP] / no period
    valid = ids.ne(0)
    punct = torch.zeros(200, dtype=torch.bool)
    punct[9] = True
    rows = {
        s: word_mask(ids, valid, s, punct).long().tolist() for s in ("reference", "drop_period", "all_words")
    }
    assert rows["reference"] == [[0, 1, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]]  # loses word 8 of the second
    assert rows["drop_period"] == [[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert rows["all_words"] == [[0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="word_span"):
        word_mask(ids, valid, "words", punct)


@pytest.mark.parametrize("span", ["reference", "drop_period", "all_words"])
def test_cls_final_tokens_padding_and_zero_slot_do_not_change_scores(root: Path, span: str) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm, word_span=span, store_dtype="float32").eval()
    if span == "drop_period":  # the tiny vocabulary has no punctuation: call every token punctuation
        model.punct = torch.ones(model.processor.tokenizer.vocab_size, dtype=torch.bool)
    batch = next(iter(dm.test_dataloader()[0]))
    length = batch.text.attention_mask.sum(1)
    q, g = encoded(model, dm)
    n_words = {"reference": length - 3, "drop_period": length - 3, "all_words": length - 2}[span]
    assert torch.equal(q.mask[: len(length)].sum(1), n_words)  # [CLS], [SEP] (and the final token) dropped
    assert q.tok.shape[1] == batch.text.input_ids.shape[1] - (3 if span == "reference" else 2)
    assert g.tok.shape[1] == 16  # the 4x4 grid cells: the zero slot is not a region
    S = model.score(q, g)
    gen = torch.Generator().manual_seed(0)
    garbage = Features(
        index=q.index,
        glob=torch.randn(q.glob.shape, generator=gen),
        tok=torch.where(q.mask[..., None], q.tok, torch.randn(q.tok.shape, generator=gen)),
        mask=q.mask,
    )
    zero_slot = Features(index=g.index, glob=torch.randn(g.glob.shape, generator=gen), tok=g.tok, mask=g.mask)
    torch.testing.assert_close(model.score(garbage, zero_slot), S, atol=0, rtol=0)


# -- the model: norms, hinge (unit tests 3, 4) ---------------------------------------------------------------


def test_registered_with_its_tasks() -> None:
    assert METHODS.get("teran") is TERAN
    assert TERAN.tasks == {"text-image", "image-text"} and "mesnico/TERAN" in TERAN.provenance


def test_unit_norms_and_the_mrsw_bound(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm).eval()
    batch = first_batch(dm)
    with torch.no_grad():
        txt, img = model.text_sets(batch.text), model.image_sets(batch.visual)
    for s in (txt, img):
        norms = s.tok.norm(dim=-1)
        torch.testing.assert_close(norms[s.mask], torch.ones(int(s.mask.sum())))
        assert norms[~s.mask].abs().sum() == 0
        torch.testing.assert_close(s.glob.norm(dim=-1), torch.ones(len(s.glob)))
    S = alignment_matrix(txt.tok, txt.mask, img.tok, img.mask)
    assert (S.abs() <= txt.mask.sum(1, keepdim=True).float() + 1e-5).all()


def test_hinge_equals_brute_force_and_vanishes_when_margins_are_met(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm, sum_warmup_epochs=0).eval()
    batch = first_batch(dm)
    with torch.no_grad():
        txt, img = model.text_sets(batch.text), model.image_sets(batch.visual)
        loss = model.losses(batch)["hinge"]
    n, a = len(txt.tok), model.hp.margin
    S = [
        [brute(txt.tok[c], txt.mask[c], img.tok[i], img.mask[i], "MrSw") for c in range(n)] for i in range(n)
    ]
    cap = sum(max(max(a + S[i][j] - S[i][i], 0) for j in range(n) if j != i) for i in range(n))
    im = sum(max(max(a + S[i][j] - S[j][j], 0) for i in range(n) if i != j) for j in range(n))
    torch.testing.assert_close(loss, torch.tensor(cap + im), atol=1e-4, rtol=1e-5)
    # identical captions and images made of one shared direction per pair: S_ii = n_words, S_ij = 0
    e = torch.eye(n, 4 * n)[:, None, :]
    tok_t, tok_i = e.expand(n, 3, 4 * n), e.expand(n, 2, 4 * n)
    S0 = alignment_matrix(
        tok_t, torch.ones(n, 3, dtype=torch.bool), tok_i, torch.ones(n, 2, dtype=torch.bool)
    )
    assert hardest_negative_triplet(S0.T, a) == 0


def test_first_epochs_sum_the_hinge_over_all_negatives(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm).eval()
    assert model.hp.sum_warmup_epochs is None and TERAN(profile="paper").hp.sum_warmup_epochs == 0
    assert model.sum_warmup == 1  # image-text matching: one summed epoch (fgbench.losses.warmup)
    batch = first_batch(dm)
    with torch.no_grad():
        txt, img = model.text_sets(batch.text), model.image_sets(batch.visual)
        S = alignment_matrix(txt.tok, txt.mask, img.tok, img.mask).T
        assert model.current_epoch == 0
        torch.testing.assert_close(model.losses(batch)["hinge"], hardest_negative_triplet(S, 0.2, False))
        model.sum_warmup = 0
        torch.testing.assert_close(model.losses(batch)["hinge"], hardest_negative_triplet(S, 0.2, True))


def test_mask_same_image_and_global_aux_loss(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    plain = built(dm).eval()
    masked = built(dm, mask_same_image=True).eval()
    aux = built(dm, global_aux_loss=True).eval()
    batch = first_batch(dm)
    assert batch.label.unique().numel() < len(batch.label)  # five captions per image: duplicates occur
    with torch.no_grad():
        assert masked.losses(batch)["hinge"] <= plain.losses(batch)["hinge"]
        terms = aux.losses(batch)
    assert set(terms) == {"hinge", "global_hinge"}
    torch.testing.assert_close(terms["hinge"], plain.losses(batch)["hinge"])


def test_options_are_checked() -> None:
    for kw, field in [
        ({"alignment_mode": "max"}, "alignment_mode"),
        ({"pos_encoding": "sine"}, "pos_encoding"),
        ({"word_span": "words"}, "word_span"),
        ({"rerank_k": 5}, "global_aux_loss"),
        ({"embed_dimension": 8}, "unknown profile override"),
    ]:
        with pytest.raises((ValueError, TypeError), match=field):
            TERAN(**kw)


def test_checkpoints_load_and_the_shared_transformer_switch(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm)
    again = built(dm)
    again.load_state_dict(model.state_dict())
    shared = built(dm, shared_transformer=True)
    assert shared.image_transformer is None and model.image_transformer is not None


# -- shared checks of docs/methods.md §0 on real features ----------------------------------------------------


def test_shared_checks_grid_regions_with_bf16_storage(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes")
    model = built(dm).eval()
    q, g = shared_checks(built(dm, store_dtype="float32"), dm)  # batch independence exact in fp32
    assert q.tok.dtype == torch.float32 and g.tok.shape[1] == 16 and model.region_source == "grid"
    whole, split = eval_batches(dm, 64), eval_batches(dm, 3)
    for i, encode in enumerate((model.encode_queries, model.encode_gallery)):  # bf16: one rounding step
        assert_encoding_batch_independent(encode, whole[i], split[i], atol=8e-3)
    with torch.no_grad():
        qb = Features.cat([model.encode_queries(b) for b in whole[0]])
        gb = Features.cat([model.encode_gallery(b) for b in whole[1]])
    assert qb.tok.dtype == torch.bfloat16 and qb.glob.dtype == torch.float32
    assert_block_invariant(model, qb, gb)


def test_shared_checks_roi_regions_over_the_data_boxes(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", with_boxes=True)
    model = built(dm, store_dtype="float32")
    assert model.region_source == "roi"
    _, g = shared_checks(model, dm)
    assert g.tok.shape[1] == model.hp.max_regions and 2 <= int(g.mask.sum(1).min()) <= 4


def test_person_images_give_a_grid_of_regions(root: Path) -> None:  # shared checks: test_contract.py
    dm = synth_dm(root, "synth-person")
    _, g = encoded(built(dm).eval(), dm)
    h, w = dm.tiny_image_size
    assert g.tok.shape[1] == (h // 8) * (w // 8)  # the grid of TinyCNN cells (three stride-2 convs)


def test_shared_checks_on_precomp_forces_no_positional_encoding(root: Path) -> None:
    fx.write_precomp(root, "f30k", PRECOMP_SIZES)
    dm = Flickr30KDataModule(root=str(root), feature_source="precomp")
    model = built(dm, store_dtype="float32")
    assert model.cnn is None and model.pos is None and model.effective_pos == "none"
    _, g = shared_checks(model, dm)
    assert g.tok.shape[1] == model.hp.max_regions and int(g.mask.sum(1).max()) == fx.REGIONS


def test_shared_checks_on_butd_with_boxes(tmp_path: Path) -> None:
    fx.write_coco_butd(tmp_path)
    dm = COCODataModule(root=str(tmp_path), feature_source="butd", batch_size=4)
    model = built(dm, store_dtype="float32")
    assert model.region_source == "butd" and model.pos is not None
    shared_checks(model, dm)
    batch = first_batch(dm)  # the boxes reach the positional encoding: moving them changes the regions
    with torch.no_grad():
        model.eval()
        a = model.image_sets(batch.visual).tok
        batch.visual.boxes = batch.visual.boxes.flip(-1)
        assert not torch.allclose(model.image_sets(batch.visual).tok, a)


def test_global_shortlist_reranked_by_alignment_over_all_items_equals_exact(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes")
    exact = built(dm, global_aux_loss=True, store_dtype="float32").eval()
    q, g = encoded(exact, dm)
    spec = EvalSpec("person_t2i", torch.arange(len(q)) // 5, torch.arange(len(g)))
    want = exact.evaluate_features(q, g, spec).metrics
    exact.rerank_k = len(g)  # shortlist = every item, re-scored by the alignment
    torch.testing.assert_close(exact.score(q, g), q.glob @ g.glob.T)
    result = exact.evaluate_features(q, g, spec)
    assert result.metrics == want and result.details["rerank_k"] == len(g)


# -- runs through the CLI ------------------------------------------------------------------------------------


def cli_run(tmp_path: Path, data: list[str], *extra: str, steps: int = 2) -> dict[str, Any]:
    return config_fit(tmp_path, "teran", data, "--data.batch_size", "4", *extra, steps=steps)[0]


def test_cli_fit_and_test_on_synth_scenes_and_person(root: Path, tmp_path: Path) -> None:
    data = synth_args(root, "synth-scenes")
    rec = cli_run(tmp_path / "scenes", data, "--model.init_args.alignment_mode", "symm")
    assert rec["dataset"] == "synth-scenes" and rec["global_step"] == 2
    assert rec["details"]["protocol"] == "f30k_1k" and {"t2i_R1", "i2t_R1", "rsum"} <= set(rec["metrics"])
    assert (
        rec["details"]["teran"]["alignment_mode"] == "symm" and rec["details"]["teran"]["regions"] == "grid"
    )
    data = synth_args(root, "synth-person")
    rec = cli_run(tmp_path / "person", data)
    assert rec["dataset"] == "synth-person" and rec["details"]["protocol"] == "person_t2i"
    assert {"R1", "mAP", "mINP"} <= set(rec["metrics"])


@pytest.mark.parametrize(
    "name", ["coco_butd", "f30k_images", "f30k_precomp", pytest.param("f30k_butd", marks=pytest.mark.slow)]
)
def test_cli_fit_and_test_on_official_format_fixtures(tmp_path: Path, name: str) -> None:
    rec = itm_fixture_run(cli_run, tmp_path, name, "teran")
    pos = rec["details"]["teran"]["pos_encoding"]
    assert pos == ("none" if name == "f30k_precomp" else "concat-and-process")


@pytest.mark.slow
def test_cli_fit_and_test_on_karpathy_images_with_boxes(tmp_path: Path) -> None:
    karpathy_boxes_run(cli_run, tmp_path, "teran")


# -- paper profile, offline ----------------------------------------------------------------------------------


def test_paper_profile_builds_offline_and_trains(tmp_path: Path, bert_dir: Path) -> None:
    fx.write_f30k_butd(tmp_path)
    dm = Flickr30KDataModule(root=str(tmp_path), feature_source="butd", batch_size=4)
    model = built(dm, profile="paper", bert_path=str(bert_dir))
    assert len(model.text_encoder.bert.encoder.layer) == 6
    assert (model.cap_proj.in_features, model.cap_proj.out_features) == (32, 1024)
    assert model.img_proj.out_features == 1024 and len(model.visual_transformer.layers) == 4
    layer = model.text_transformer.layers[0]
    assert (layer.self_attn.num_heads, layer.linear1.out_features, layer.dropout.p) == (4, 2048, 0.1)
    assert not layer.norm_first and len(model.image_transformer.layers) == 2
    assert model.visual_transformer.layers[0].linear1.out_features == 2048
    cfg = model.optim_cfg
    assert (cfg.name, cfg.lr, cfg.weight_decay, cfg.schedule, cfg.step_epochs, cfg.gamma) == (
        "adam",
        1e-5,
        0.0,
        "step",
        20,
        0.1,
    )
    assert model.hp.grad_clip == 2.0 and model.processor.tokenizer.max_length == 88
    batch = first_batch(dm)
    assert batch.text.input_ids.shape == (4, 88)
    model.losses(batch)["hinge"].backward()
    assert model.text_encoder.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_paper_profile_drops_a_final_period_but_keeps_a_final_word(bert_dir: Path) -> None:
    from fgbench.encoders import HFTokenizer

    tok = HFTokenizer(bert_dir, max_length=12)
    enc = tok(["a dog .", "a dog"])
    punct = punctuation_table(tok)
    assert (
        punct[BERT_VOCAB.index(".")] and punct[BERT_VOCAB.index(",")] and not punct[BERT_VOCAB.index("dog")]
    )
    ids, valid = enc["input_ids"], enc["attention_mask"].bool()
    words = word_mask(ids, valid, "drop_period", punct)
    assert [ids[i][words[i]].tolist() for i in range(2)] == [
        [BERT_VOCAB.index("a"), BERT_VOCAB.index("dog")]
    ] * 2
    ref = word_mask(ids, valid, "reference", punct)
    assert ids[1][ref[1]].tolist() == [BERT_VOCAB.index("a")]  # the code loses "dog"


def test_warmup_steps_start_from_lr_over_steps(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm, warmup_steps=1000, overrides={"optim": {"schedule": "step", "step_epochs": 20}})
    model._schedule_steps = lambda: (3000 * 30, 3000)  # type: ignore[method-assign]
    sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    f = sched.lr_lambdas[0]
    assert f(0) == pytest.approx(1e-3) and f(500) == pytest.approx(0.5, abs=1e-3)
    assert f(1000) == 1.0 and f(20 * 3000) == pytest.approx(0.1)


def test_experiment_configs_resolve() -> None:
    for dataset, batch in (("coco", 40), ("f30k", 30)):
        cfg = paper_config("teran", dataset)
        assert cfg["data"]["init_args"]["batch_size"] == batch and cfg["trainer"]["max_epochs"] == 30
        assert (
            cfg["data"]["init_args"]["feature_source"] == "butd"
            and cfg["model"]["init_args"]["profile"] == "paper"
        )
        warm = (cfg["model"]["init_args"].get("overrides") or {}).get("warmup_steps", 0)
        assert warm == (1000 if dataset == "f30k" else 0)


# -- slow: the tiny profile learns ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_profile_learns_synth_scenes(tmp_path: Path) -> None:
    losses, metrics, dm = moderate_fit(TERAN, "synth-scenes", tmp_path)
    per_epoch = len(losses) // 8  # the first epoch sums the hinge over all negatives: compare the others
    assert loss_fell(losses[per_epoch:], epochs=7)
    assert metrics["t2i_R1"] >= 3 * 100.0 / MODERATE_SIZES["synth-scenes"]["test_images"]


@pytest.mark.slow
def test_tiny_profile_loss_falls_on_synth_person(tmp_path: Path) -> None:
    # Only the loss: tiny models from scratch stay near chance on synth-person (docs/synthetic.md, open).
    losses, metrics, dm = moderate_fit(TERAN, "synth-person", tmp_path)
    per_epoch = len(losses) // 8
    assert loss_fell(losses[per_epoch:], epochs=7, ratio=0.8) and {"R1", "mAP"} <= set(metrics)


def test_text_batch_without_tokens_is_an_error(root: Path) -> None:
    dm = synth_dm(root, "synth-scenes", batch_size=8)
    model = built(dm)
    with pytest.raises(ValueError, match="input_ids"):
        model.text_sets(Text(raw=["a dog"]))
