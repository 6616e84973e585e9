"""Image and text encoder factories (timm, transformers CLIP/BERT, tiny test-sized variants), tokenizers and
method processors. Importing the package registers every encoder; see `list_image_encoders()` and
`list_text_encoders()`.

Example:
    >>> from fgbench.encoders import build_image_encoder, build_text_encoder
    >>> vit = build_image_encoder("tiny_vit", image_size=(64, 32))
    >>> txt = build_text_encoder("tiny_text", vocab_size=tokenizer.vocab_size)
"""

from fgbench.encoders.bert import BertText
from fgbench.encoders.clip import ClipText, ClipVision, GridEmbeddings
from fgbench.encoders.config import NORMALISATIONS, ImageTowerConfig
from fgbench.encoders.hf import load_hf_model
from fgbench.encoders.outputs import ImageOutput, TextOutput
from fgbench.encoders.processors import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRANSFORM_PRESETS,
    MethodProcessor,
    TargetPad,
    register_preset,
)
from fgbench.encoders.regions import RegionEncoder
from fgbench.encoders.registry import (
    IMAGE_ENCODERS,
    TEXT_ENCODERS,
    build_image_encoder,
    build_text_encoder,
    list_image_encoders,
    list_text_encoders,
    register_image_encoder,
    register_text_encoder,
)
from fgbench.encoders.rnn import RNNText
from fgbench.encoders.timm_backbone import TimmEncoder, roi_pool
from fgbench.encoders.tiny import TinyCNN, TinyText, TinyViT
from fgbench.encoders.tokenizers import HFTokenizer, Tokenizer, WordTokenizer

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_ENCODERS",
    "NORMALISATIONS",
    "TEXT_ENCODERS",
    "TRANSFORM_PRESETS",
    "BertText",
    "ClipText",
    "ClipVision",
    "GridEmbeddings",
    "HFTokenizer",
    "ImageTowerConfig",
    "ImageOutput",
    "MethodProcessor",
    "RNNText",
    "RegionEncoder",
    "TargetPad",
    "TextOutput",
    "TimmEncoder",
    "TinyCNN",
    "TinyText",
    "TinyViT",
    "Tokenizer",
    "WordTokenizer",
    "build_image_encoder",
    "build_text_encoder",
    "list_image_encoders",
    "list_text_encoders",
    "load_hf_model",
    "register_image_encoder",
    "register_preset",
    "register_text_encoder",
    "roi_pool",
]
