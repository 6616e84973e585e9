"""Encoders: real forward and backward passes of every tiny variant and of tiny-config transformers and timm
models saved to tmp_path and loaded back through the factories; CLIP's non-square positional grid; RoI
pooling; the weights-only loading of timm weights."""

from pathlib import Path

import pytest
import torch
from method_checks import TINY_TRANSFORMER
from torch import Tensor, nn

from fgbench.data.batches import Text, Visual
from fgbench.encoders import (
    ImageOutput,
    TextOutput,
    build_image_encoder,
    build_text_encoder,
    list_image_encoders,
    list_text_encoders,
    roi_pool,
)
from fgbench.encoders.layers import grid_boxes, resize_pos_grid

torch.manual_seed(0)


def make_text(lengths: list[int], width: int, vocab: int = 50) -> Text:
    """Right-padded random ids in [5, vocab) with the given lengths, padded to `width` with 0."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (len(lengths), width), generator=g)
    mask = torch.arange(width) < torch.tensor(lengths).unsqueeze(1)
    return Text(raw=[""] * len(lengths), input_ids=ids * mask, attention_mask=mask.long())


def repad(text: Text, width: int) -> Text:
    """The same captions padded to a longer `width`."""
    extra = width - text.input_ids.shape[1]
    ids = nn.functional.pad(text.input_ids, (0, extra))
    return Text(
        raw=text.raw, input_ids=ids, attention_mask=nn.functional.pad(text.attention_mask, (0, extra))
    )


def backward_reaches_all(module: nn.Module, out: ImageOutput | TextOutput) -> None:
    """Backpropagate through glob and tokens; every parameter must get a finite gradient."""
    loss = out.glob.square().sum() + (0 if out.tokens is None else out.tokens.square().mean())
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_registries_list_every_encoder() -> None:
    assert list_image_encoders() == ["clip_vit", "regions", "timm", "tiny_cnn", "tiny_vit"]
    assert list_text_encoders() == ["bert", "clip_text", "gru", "lstm", "tiny_text"]
    with pytest.raises(KeyError, match="unknown image encoder 'vit'; registered: clip_vit"):
        build_image_encoder("vit")


def test_grid_boxes_row_major() -> None:
    boxes = grid_boxes((2, 4))
    assert boxes.shape == (8, 4)
    assert boxes[1].tolist() == [0.25, 0.0, 0.5, 0.5]
    assert boxes[7].tolist() == [0.75, 0.5, 1.0, 1.0]


def test_tiny_vit_non_square_forward_backward() -> None:
    enc = build_image_encoder("tiny_vit", image_size=(64, 32))
    out = enc(Visual(pixels=torch.randn(2, 3, 64, 32)))
    assert out.glob.shape == (2, 64) and out.tokens.shape == (2, 1 + 8 * 4, 64)
    assert torch.equal(out.glob, out.tokens[:, 0])
    assert out.mask.all() and out.boxes.shape == (2, 33, 4)
    assert out.boxes[0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out.boxes[0, 1].tolist() == [0.0, 0.0, 0.25, 0.125]
    backward_reaches_all(enc, out)


def test_tiny_vit_other_sizes() -> None:
    enc = build_image_encoder("tiny_vit", image_size=(64, 32))
    assert enc(Visual(pixels=torch.randn(1, 3, 32, 32))).tokens.shape == (1, 17, 64)
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        enc(Visual(pixels=torch.randn(1, 3, 30, 32)))
    with pytest.raises(ValueError, match="needs images"):
        enc(Visual(regions=torch.randn(1, 4, 8)))


def test_tiny_cnn_grid_cells_as_regions() -> None:
    enc = build_image_encoder("tiny_cnn")
    out = enc(Visual(pixels=torch.randn(3, 3, 32, 32)))
    assert out.tokens.shape == (3, 16, 64) and out.glob.shape == (3, 64)
    assert torch.allclose(out.glob, out.tokens.mean(1))
    assert torch.equal(out.boxes[2], grid_boxes((4, 4)))
    backward_reaches_all(enc, out)


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_tiny_text_pooling_and_padding(pool: str) -> None:
    enc = build_text_encoder("tiny_text", vocab_size=50, pool=pool)
    text = make_text([5, 3], width=8)
    out = enc(text)
    assert out.glob.shape == (2, 64) and out.tokens.shape == (2, 8, 64)
    assert out.tokens[1, 3:].eq(0).all()
    expected = {
        "last": torch.stack([out.tokens[0, 4], out.tokens[1, 2]]),  # the EOS positions
        "mean": torch.stack([out.tokens[0, :5].mean(0), out.tokens[1, :3].mean(0)]),
    }
    assert torch.allclose(out.glob, expected[pool], atol=1e-6)
    enc.eval()
    with torch.no_grad():
        short, long = enc(text), enc(repad(text, 18))
    assert torch.allclose(short.glob, long.glob, atol=1e-5)
    enc.train()
    backward_reaches_all(enc, enc(text))


def test_tiny_text_rejects_untokenised_or_too_long() -> None:
    enc = build_text_encoder("tiny_text", vocab_size=50)
    with pytest.raises(ValueError, match="input_ids is None"):
        enc(Text(raw=["a"]))
    with pytest.raises(ValueError, match="exceeds max_len 18"):
        enc(make_text([3], width=20))
    with pytest.raises(ValueError, match="pool 'eos': expected one of last, mean, max"):
        build_text_encoder("tiny_text", vocab_size=50, pool="eos")


def test_gru_last_step_max_pool_and_padding() -> None:
    enc = build_text_encoder("gru", vocab_size=50, word_dim=16, hidden=12).eval()
    text = make_text([6, 2, 4], width=7)
    with torch.no_grad():
        out, longer = enc(text), enc(repad(text, 12))
    assert out.glob.shape == (3, 12) and out.tokens.shape == (3, 7, 12)
    assert torch.allclose(out.glob, out.tokens[torch.arange(3), torch.tensor([5, 1, 3])], atol=1e-6)
    assert torch.allclose(out.glob, longer.glob, atol=1e-6) and longer.tokens[:, 7:].eq(0).all()
    bi = build_text_encoder("gru", vocab_size=50, word_dim=16, hidden=12, bidirectional=True, pool="max")
    out = bi(text)
    assert bi.out_dim == 24 and out.glob.shape == (3, 24)
    assert torch.equal(out.glob[1], out.tokens[1, :2].amax(0))
    backward_reaches_all(bi, out)


def test_lstm_variant_forward_backward() -> None:
    enc = build_text_encoder("lstm", vocab_size=50, word_dim=16, hidden=8)
    assert isinstance(enc.rnn, nn.LSTM)
    out = enc(make_text([4, 1], width=5))
    assert torch.allclose(out.glob, out.tokens[torch.arange(2), torch.tensor([3, 0])], atol=1e-6)
    backward_reaches_all(enc, out)


def region_batch() -> Visual:
    regions = torch.randn(2, 5, 12)
    boxes = torch.rand(2, 5, 2).repeat(1, 1, 2) * 0.5 + torch.tensor([0.0, 0.0, 0.5, 0.5])
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    return Visual(regions=regions, boxes=boxes, region_mask=mask)


@pytest.mark.parametrize("pos_encoding", ["concat-and-process", "project-and-sum", "none"])
def test_regions_encoder(pos_encoding: str) -> None:
    enc = build_image_encoder("regions", in_dim=12, dim=6, pos_encoding=pos_encoding)
    visual = region_batch()
    out = enc(visual)
    assert out.tokens.shape == (2, 5, 6) and out.tokens[1, 3:].eq(0).all()
    assert torch.allclose(out.glob[1], out.tokens[1, :3].mean(0), atol=1e-6)
    assert torch.equal(out.boxes, visual.boxes)
    backward_reaches_all(enc, out)


def test_regions_concat_and_process_formula() -> None:
    enc = build_image_encoder("regions", in_dim=12, dim=None, pos_encoding="concat-and-process")
    visual = region_batch()
    b = visual.boxes
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    first, _, second = enc.pos.map
    x = torch.cat([visual.regions, b, area.unsqueeze(-1)], -1)
    expected = second(torch.relu(first(x))) * visual.region_mask.unsqueeze(-1)
    assert torch.allclose(enc(visual).tokens, expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs the region boxes"):
        enc(Visual(regions=visual.regions))
    with pytest.raises(ValueError, match="expected one of"):
        build_image_encoder("regions", pos_encoding="sum")


def test_roi_pool_averages_the_cells_of_each_box() -> None:
    fmap = torch.randn(2, 3, 4, 6)
    boxes = torch.tensor(
        [[[0, 0, 1, 1], [1 / 6, 1 / 4, 4 / 6, 3 / 4]], [[0.5, 0.5, 1, 1], [0, 0, 1 / 6, 1 / 4]]]
    )
    pooled = roi_pool(fmap, boxes)
    assert pooled.shape == (2, 2, 3)
    expected = [
        [fmap[0].mean((1, 2)), fmap[0, :, 1:3, 1:4].mean((1, 2))],
        [fmap[1, :, 2:, 3:].mean((1, 2)), fmap[1, :, 0, 0]],
    ]
    assert torch.allclose(pooled, torch.stack([torch.stack(row) for row in expected]), atol=1e-5)


def test_roi_pool_constant_per_region_map() -> None:
    fmap = torch.zeros(1, 2, 4, 4)
    fmap[..., :2, :] = 3.0  # top half region
    fmap[..., 2:, :2] = -1.0  # bottom-left quarter
    fmap[..., 2:, 2:] = 7.0  # bottom-right quarter
    boxes = torch.tensor([[[0, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]])
    assert roi_pool(fmap, boxes)[0, :, 0].tolist() == [3.0, -1.0, 7.0]


def test_timm_grid_tokens_and_roi_boxes() -> None:
    enc = build_image_encoder("timm", model_name="test_resnet")
    out = enc(Visual(pixels=torch.randn(2, 3, 64, 64)))
    assert out.glob.shape == (2, enc.out_dim) and out.tokens.shape == (2, 4, enc.out_dim)
    assert torch.allclose(out.glob, out.tokens.mean(1), atol=1e-5)  # global average pool of the grid
    backward_reaches_all(enc, out)
    roi = build_image_encoder("timm", model_name="test_resnet", roi_boxes=True)
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0, 1, 1]]).expand(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = roi(Visual(pixels=torch.randn(2, 3, 64, 64), boxes=boxes, region_mask=mask))
    assert out.tokens.shape == (2, 3, roi.out_dim) and out.tokens[1, 1:].eq(0).all()
    assert torch.allclose(out.tokens[:, 0], out.glob, atol=1e-5)
    with pytest.raises(ValueError, match="needs normalised boxes"):
        roi(Visual(pixels=torch.randn(1, 3, 64, 64)))


class NotAWeight:
    """An arbitrary object: a weights-only load must refuse to unpickle it."""


def test_timm_weights_from_local_file_and_folder(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    src = timm.create_model("test_resnet", pretrained=False)  # with its classifier, as published weights are
    torch.save(src.state_dict(), tmp_path / "w.pth")
    (tmp_path / "dir").mkdir()
    save_file(src.state_dict(), tmp_path / "dir" / "model.safetensors")
    for path in (tmp_path / "w.pth", tmp_path / "dir"):
        enc = build_image_encoder("timm", model_name="test_resnet", pretrained_path=path)
        assert torch.equal(enc.model.conv1[0].weight, src.conv1[0].weight)
        assert enc.model.num_classes == 0
    torch.save({"state_dict": src.state_dict(), "extra": NotAWeight()}, tmp_path / "evil.pth")
    with pytest.raises(RuntimeError, match="weights_only"):
        build_image_encoder("timm", model_name="test_resnet", pretrained_path=tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError):
        build_image_encoder("timm", model_name="test_resnet", pretrained_path=tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A tiny full CLIPModel saved like a hub checkpoint (both towers in one folder)."""
    from transformers import CLIPConfig, CLIPModel

    # the sub-configs carry projection_dim too, as the hub's config.json files do
    vision = dict(TINY_TRANSFORMER, num_hidden_layers=2, projection_dim=16)
    text = dict(vision, vocab_size=60, max_position_embeddings=16, eos_token_id=59)
    config = CLIPConfig(
        text_config=text, vision_config=dict(vision, image_size=32, patch_size=8), projection_dim=16
    )
    model = CLIPModel(config).eval()
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    return path, model


def test_clip_vit_native_size_matches_clip(clip_dir: tuple[Path, nn.Module]) -> None:
    path, ref = clip_dir
    enc = build_image_encoder("clip_vit", name_or_path=path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    out = enc(Visual(pixels=pixels))
    assert out.tokens.shape == (2, 17, 16) and enc.out_dim == 16
    with torch.no_grad():
        expected = ref.visual_projection(ref.vision_model(pixel_values=pixels).pooler_output)
    assert torch.allclose(out.glob, expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"built for \(32, 32\) inputs"):
        enc(Visual(pixels=torch.randn(1, 3, 48, 16)))


def test_clip_vit_non_square_grid(clip_dir: tuple[Path, nn.Module]) -> None:
    path, ref = clip_dir
    enc = build_image_encoder("clip_vit", name_or_path=path, image_size=(48, 16))
    assert enc.vision.embeddings.grid == (6, 2)
    assert enc.vision.embeddings.position_embedding.weight.shape == (1 + 12, 32)
    pixels = torch.randn(2, 3, 48, 16)
    out = enc(Visual(pixels=pixels))
    assert out.tokens.shape == (2, 13, 16)
    assert torch.allclose(
        out.boxes[0, 2], torch.tensor([0.5, 0.0, 1.0, 1 / 6])
    )  # patch (0, 1) of the 6x2 grid
    with torch.no_grad():  # transformers' per-call interpolation gives the same result at initialisation
        hf = ref.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
    assert torch.allclose(out.glob, ref.visual_projection(hf), atol=1e-5)
    backward_reaches_all(enc, out)


def test_resize_pos_grid_identity_and_shape() -> None:
    pos = torch.randn(4 * 3, 8)
    assert torch.allclose(resize_pos_grid(pos, (4, 3), (4, 3)), pos, atol=1e-6)
    assert resize_pos_grid(pos, (4, 3), (24, 8)).shape == (192, 8)


def test_clip_text_eot_glob_matches_clip(clip_dir: tuple[Path, nn.Module]) -> None:
    path, ref = clip_dir
    enc = build_text_encoder("clip_text", name_or_path=path).eval()
    text = make_text([5, 3], width=8, vocab=59)
    text.input_ids[0, 4] = text.input_ids[1, 2] = 59  # EOT, the largest id
    out = enc(text)
    assert out.tokens.shape == (2, 8, 16) and out.tokens[1, 3:].eq(0).all()
    with torch.no_grad():
        hidden = ref.text_model(input_ids=text.input_ids, attention_mask=text.attention_mask).pooler_output
    assert torch.allclose(out.glob, ref.text_projection(hidden), atol=1e-5)
    enc.train()
    backward_reaches_all(enc, enc(text))


def test_hf_loading_fails_on_missing_weights(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(num_hidden_layers=1, image_size=32, patch_size=8, **TINY_TRANSFORMER)
    CLIPVisionModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="visual_projection"):
        build_image_encoder("clip_vit", name_or_path=tmp_path, projection=True)
    enc = build_image_encoder("clip_vit", name_or_path=tmp_path, projection=False)
    assert enc.out_dim == 32 and isinstance(enc.proj, nn.Identity)


def test_bert_truncated_to_first_layers(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=50, num_hidden_layers=4, max_position_embeddings=32, **TINY_TRANSFORMER)
    full = BertModel(cfg).eval()
    full.save_pretrained(tmp_path)
    enc = build_text_encoder("bert", name_or_path=tmp_path, num_layers=2).eval()
    assert len(enc.bert.encoder.layer) == 2 and enc.bert.config.num_hidden_layers == 2
    text = make_text([6, 4], width=7)
    out = enc(text)
    with torch.no_grad():
        states = full(input_ids=text.input_ids, attention_mask=text.attention_mask, output_hidden_states=True)
    expected: Tensor = states.hidden_states[2] * text.attention_mask.unsqueeze(-1)
    assert torch.allclose(out.tokens, expected, atol=1e-5)
    assert torch.equal(out.glob, out.tokens[:, 0])
    enc.train()
    backward_reaches_all(enc, enc(text))


def test_masked_softmax_is_the_softmax_over_valid_positions_and_zero_for_an_empty_row() -> None:
    from fgbench.encoders.layers import masked_softmax

    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(4, 6, generator=g)
    rows = [[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1] * 6, [0, 0, 0, 0, 0, 1]]
    mask = torch.tensor(rows, dtype=torch.bool)
    out = masked_softmax(logits, mask)
    for i in range(4):
        want = torch.zeros(6)
        if mask[i].any():
            want[mask[i]] = logits[i, mask[i]].softmax(-1)
        torch.testing.assert_close(out[i], want, rtol=0, atol=1e-7)
        assert (out[i][~mask[i]] == 0).all()  # exactly zero where masked; the empty row is all zero, not NaN
    # along another dim, with a broadcast mask, in bf16: still no NaN and exact zeros where masked
    cols = mask.T[:, :1].expand(6, 4)
    half = masked_softmax(logits.T.to(torch.bfloat16), cols, dim=0)
    assert not half.isnan().any() and (half[~cols] == 0).all()
