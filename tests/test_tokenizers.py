"""Tokenizers and method processors: vocabulary order, reserved ids, truncation, fixed shapes, JSON save/load,
pickling (they run in DataLoader workers) and the transform presets' output shapes."""

import json
import pickle
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from fgbench.data.processor import Processor
from fgbench.encoders import HFTokenizer, MethodProcessor, TargetPad, WordTokenizer

CAPTIONS = ["A man in a red shirt.", "A woman, in a blue coat!", "The man's bag is red", "a dog"]


@pytest.fixture
def tok() -> WordTokenizer:
    return WordTokenizer.build(CAPTIONS, max_words=1000, max_len=16)


def test_vocabulary_order_is_frequency_then_alphabetical(tok: WordTokenizer) -> None:
    # a:4, in:2, man:2, red:2, then the singletons alphabetically
    assert tok.words[:4] == ["a", "in", "man", "red"]
    assert tok.words[4:] == sorted(tok.words[4:])
    assert WordTokenizer.build(CAPTIONS, max_words=3).words == ["a", "in", "man"]


def test_vocabulary_is_deterministic() -> None:
    shuffled = CAPTIONS[:]
    random.Random(0).shuffle(shuffled)
    assert WordTokenizer.build(shuffled).words == WordTokenizer.build(CAPTIONS).words


def test_reserved_ids_and_padding(tok: WordTokenizer) -> None:
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.unk_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == 5 + len(tok.words)
    out = tok(["a man", "zebra"])
    ids = out["input_ids"]
    assert ids.shape == (2, 18) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [1, 5, 7, 2] and ids[0, 4:].eq(0).all()
    assert ids[1, :3].tolist() == [1, 4, 2]  # unknown word -> <unk>
    assert torch.equal(out["attention_mask"], ids.ne(0).long())


def test_round_trip_strips_case_and_punctuation(tok: WordTokenizer) -> None:
    ids = tok(["The MAN's bag, is red."])["input_ids"][0].tolist()
    assert tok.decode(ids) == "the man s bag is red"


def test_truncation_keeps_bos_and_eos(tok: WordTokenizer) -> None:
    ids = tok([" ".join(["man"] * 30)])["input_ids"][0]
    assert ids.shape == (18,)
    assert ids[0] == tok.bos_id and ids[17] == tok.eos_id
    assert ids[1:17].eq(7).all()


def test_save_load_json(tok: WordTokenizer, tmp_path: Path) -> None:
    path = tmp_path / "vocab.json"
    tok.save(path)
    assert json.loads(path.read_text())["words"] == tok.words
    loaded = WordTokenizer.load(path)
    assert torch.equal(loaded(CAPTIONS)["input_ids"], tok(CAPTIONS)["input_ids"])
    path.write_text(json.dumps({"kind": "bpe"}))
    with pytest.raises(ValueError, match="'kind'"):
        WordTokenizer.load(path)


def test_reserved_or_duplicate_words_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="reserved"):
        WordTokenizer(["<unk>"])


def test_word_tokenizer_pickles(tok: WordTokenizer) -> None:
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(CAPTIONS)["input_ids"], tok(CAPTIONS)["input_ids"])


def test_hf_tokenizer_fixed_length_truncation_and_pickle(tmp_path: Path) -> None:
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "in", "red", "shirt"]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path)
    tok = HFTokenizer(tmp_path, max_length=6)
    out = tok(["a man in red shirt", "a man"])
    assert out["input_ids"].tolist() == [[2, 5, 6, 7, 8, 3], [2, 5, 6, 3, 0, 0]]
    assert out["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(["a man"])["input_ids"], tok(["a man"])["input_ids"])


@pytest.mark.parametrize("preset", ["none", "reid_crop", "randcrop_flip", "targetpad"])
def test_processor_presets_give_fixed_shapes(preset: str) -> None:
    proc = MethodProcessor(image_size=(64, 32), train_transform=preset, test_transform=preset)
    img = Image.new("L", (45, 70), color=128)  # grey, not RGB
    for train in (True, False):
        x = proc.image_transform(train)(img)
        assert x.shape == (3, 64, 32) and x.dtype == torch.float32


def test_processor_normalises_and_tokenizes(tok: WordTokenizer) -> None:
    proc = MethodProcessor(image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), tokenizer=tok)
    assert isinstance(proc, Processor)
    x = proc.image_transform(train=False)(Image.new("RGB", (40, 40), color=(255, 0, 255)))
    assert torch.allclose(x[:, 5, 5], torch.tensor([2.0, -2.0, 2.0]))
    assert torch.equal(proc.tokenize(["a man"])["input_ids"], tok(["a man"])["input_ids"])
    assert MethodProcessor().tokenize(["a man"]) is None


def test_processor_and_transforms_pickle(tok: WordTokenizer) -> None:
    proc = MethodProcessor(train_transform="reid_crop", test_transform="targetpad", tokenizer=tok)
    again = pickle.loads(pickle.dumps(proc))
    img = Image.new("RGB", (30, 50), color=(10, 200, 30))
    transform = pickle.loads(pickle.dumps(again.image_transform(train=False)))
    assert torch.equal(transform(img), proc.image_transform(train=False)(img))
    assert torch.equal(again.tokenize(CAPTIONS)["input_ids"], tok(CAPTIONS)["input_ids"])


def test_unknown_preset_is_an_error() -> None:
    with pytest.raises(ValueError, match="train_transform: unknown preset 'flip'"):
        MethodProcessor(train_transform="flip")


def test_targetpad_pads_elongated_images_only() -> None:
    pad = TargetPad(1.25)
    tall = torch.ones(3, 100, 40)
    out = pad(tall)
    assert out.shape == (3, 100, 80)  # width padded to 100 / 1.25
    assert out[:, :, :20].eq(0).all() and out[:, :, 20:60].eq(1).all()
    squareish = torch.ones(3, 50, 45)
    assert pad(squareish) is squareish
