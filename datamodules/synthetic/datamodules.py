"""DataModules `synth-person`, `synth-scenes`, `synth-cir`: generate on first use, then read through the real
readers (RSTPReid, Flickr30K Karpathy + raw images, CIRR), so the demo exercises the loaders real data uses.

The dataset folder under `root` (default `data/synthetic`) is named by the generator from the format
version, seed and sizes; `folder` holds the default one and an instance with another seed or sizes points
its own `folder` at its copy. Counts are not checked (`expected = {}`): the sizes are options.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset, Sampler

from datamodules.cirr import CIRRDataModule
from datamodules.itm import Flickr30KDataModule
from datamodules.itm.modules import KARPATHY_SPLITS
from datamodules.person import RSTPReidDataModule
from datamodules.synthetic import generate, output_path
from fgbench.data.module import LoadedData
from fgbench.data.samplers import GroupRoundSampler
from fgbench.registry import register_datamodule

DEFAULT_ROOT = "data/synthetic"


class SyntheticMixin:
    """Generates the dataset into `root` before the parent reader's `load()` reads it.

    Args: `seed` of the generator; `sizes` overrides its size options (e.g. {"train_ids": 40}).
    """

    name: ClassVar[str]
    folder: ClassVar[str]
    published_as: ClassVar[str] = ""  # synthetic: never compared with a paper, whatever reader it shares
    root: Path

    def __init__(
        self, root: str = DEFAULT_ROOT, seed: int = 0, sizes: dict[str, int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(root=root, **kwargs)  # type: ignore[call-arg]
        self.seed, self.sizes = seed, dict(sizes or {})
        self.folder = output_path(self.name, root, seed, **self.sizes).name  # type: ignore[misc]

    def load(self) -> LoadedData:
        generate(self.name, self.root, self.seed, **self.sizes)
        return super().load()  # type: ignore[misc]


@register_datamodule("synth-person")
class SynthPersonDataModule(SyntheticMixin, RSTPReidDataModule):
    """synth-person through the RSTPReid reader (its test split has no fixed id count to check)."""

    folder: ClassVar[str] = output_path("synth-person", DEFAULT_ROOT).name
    # the tiny profile reads the images at their rendered size: at 64x32 shoes, hats and patterns are a few
    # pixels, and a tiny clip_ft reached R1 3.5 (128x64: 10.7; docs/synthetic.md, Calibration)
    tiny_image_size: ClassVar[tuple[int, int]] = (128, 64)
    detect_old_split: ClassVar[bool] = False
    expected: ClassVar[dict[str, dict[str, int | None]]] = {}


SCENE_SAMPLERS = ("random", "twins")


@register_datamodule("synth-scenes")
class SynthScenesDataModule(SyntheticMixin, Flickr30KDataModule):
    """synth-scenes through the Flickr30K reader (`feature_source="images"`, optionally `with_boxes`).

    `sampler="twins"` trains on batches where each scene and its twin sit together
    (`fgbench.data.GroupRoundSampler`, twin links from `render_record.json`): the in-batch hard negative that
    one relation or attribute apart makes; "random" (default) shuffles pairs as the Flickr30K recipes do.
    """

    folder: ClassVar[str] = output_path("synth-scenes", DEFAULT_ROOT).name
    expected: ClassVar[dict[str, dict[str, int | None]]] = {}
    expected_precomp: ClassVar[dict[str, dict[str, int | None]]] = {}
    expected_butd: ClassVar[dict[str, dict[str, int | None]]] = {}
    expected_all_captions: ClassVar[dict[str, int | None]] = {}

    def __init__(self, root: str = DEFAULT_ROOT, sampler: str = "random", **kwargs: Any) -> None:
        if sampler not in SCENE_SAMPLERS:
            raise ValueError(f"synth-scenes: sampler must be one of {SCENE_SAMPLERS}, got {sampler!r}")
        super().__init__(root=root, **kwargs)
        self.sampler = sampler

    def twin_groups(self) -> list[int]:
        """Group of each training image (split-local index): the lower image id of a scene and its twin."""
        images = json.loads((self.base / self.karpathy_json).read_text())["images"]
        record = self.base / "render_record.json"
        if not record.is_file():
            raise FileNotFoundError(f"{record}: no rendering record; sampler='twins' needs it (regenerate)")
        twin_of = [im["twin_of"] for im in json.loads(record.read_text())["images"]]
        train = [im["imgid"] for im in images if im["split"] in KARPATHY_SPLITS["train"]]
        return [min(i, twin_of[i]) if twin_of[i] is not None else i for i in train]

    def train_sampler(self, ds: Dataset, num_replicas: int, rank: int, seed: int) -> Sampler | None:
        if self.sampler == "random":
            return None
        if self.skip_missing:
            raise ValueError("synth-scenes: sampler='twins' needs every training image (skip_missing=false)")
        groups = self.twin_groups()
        labels = ds.labels  # type: ignore[attr-defined]
        if len(groups) != self.loaded.num_classes:
            raise ValueError(
                f"synth-scenes: {len(groups)} training images in the JSON, {self.loaded.num_classes} loaded"
            )
        return GroupRoundSampler(labels, groups, self.batch_size, num_replicas, rank, seed)


@register_datamodule("synth-cir")
class SynthCIRDataModule(SyntheticMixin, CIRRDataModule):
    """synth-cir through the CIRR reader. Its test1 has no targets, as in CIRR, so the default
    `test_split` is "val", scored locally as CIRR papers score val: its leaderboard numbers are val numbers.
    """

    folder: ClassVar[str] = output_path("synth-cir", DEFAULT_ROOT).name
    expected: ClassVar[dict[str, dict[str, int | None]]] = {}

    def __init__(self, root: str = DEFAULT_ROOT, test_split: str = "val", **kwargs: Any) -> None:
        super().__init__(root=root, test_split=test_split, **kwargs)
