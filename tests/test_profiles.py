"""Profile presets with overrides: flat fields, nested config dataclasses, and the errors that name them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from fgbench.encoders import CLIP_MEAN, CLIP_STD, ImageTowerConfig
from fgbench.errors import ConfigError
from fgbench.optim import OptimConfig
from fgbench.profiles import resolve_profile


@dataclass
class Tower:
    encoder: str = "tiny"
    size: tuple[int, int] | None = None


@dataclass
class Config:
    width: int = 8
    image: Tower = field(default_factory=Tower)
    optim: OptimConfig = field(default_factory=OptimConfig)


PRESETS = {"tiny": Config(), "paper": Config(width=512, optim=OptimConfig(name="adam", lr=1e-5, gamma=0.5))}


def test_a_nested_override_keeps_the_presets_other_fields() -> None:
    cfg = resolve_profile(PRESETS, "paper", {"optim": {"lr": 2e-5}, "image": {"size": [8, 4]}})
    assert cfg.optim == OptimConfig(name="adam", lr=2e-5, gamma=0.5)
    assert cfg.image == Tower(encoder="tiny", size=(8, 4))  # the YAML list became the field's tuple
    assert cfg.width == 512
    assert PRESETS["paper"].optim.lr == 1e-5  # the preset itself is untouched


def test_a_whole_nested_value_replaces_the_field() -> None:
    cfg = resolve_profile(PRESETS, "tiny", {"optim": OptimConfig(lr=0.5)})
    assert cfg.optim == OptimConfig(lr=0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"optim": {"lrr": 1.0}}, r"unknown profile override\(s\) \['optim.lrr'\]; valid: .*'optim.lr'"),
        ({"image": {"size": "big"}}, r"profile override image.size='big' \(str\): expected"),
        ({"width": "wide"}, r"profile override width='wide' \(str\): expected int"),
        ({"optim": 3}, r"profile override optim=3 \(int\): expected OptimConfig"),
    ],
)
def test_bad_overrides_name_the_dotted_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_profile(PRESETS, "tiny", overrides, "m")


@dataclass
class Method:
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)


def test_the_image_tower_config_merges_and_builds_its_processor() -> None:
    presets = {"paper": Method(ImageTowerConfig(encoder="timm", norm="clip", train_transform="targetpad"))}
    cfg = resolve_profile(presets, "paper", {"image": {"size": [8, 4]}})
    assert (cfg.image.encoder, cfg.image.size, cfg.image.train_transform) == ("timm", (8, 4), "targetpad")
    proc = cfg.image.processor(None, tiny_size=(32, 16))
    assert (proc.image_size, proc.mean, proc.std) == ((8, 4), CLIP_MEAN, CLIP_STD)
    assert proc.train_transform == "targetpad"
    assert ImageTowerConfig().processor(None, (32, 16)).image_size == (32, 16)  # no size: the data's
    with pytest.raises(ConfigError, match=r"image.norm='imagenett': expected one of half, imagenet, clip"):
        resolve_profile(presets, "paper", {"image": {"norm": "imagenett"}})
