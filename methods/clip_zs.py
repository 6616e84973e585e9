"""clip_zs: zero-shot CLIP, evaluation only (docs/methods.md §6; suite baseline).

The CLIP dual encoder of `fgbench.clip_dual` (clip_ft's towers) with CLIP's pretrained weights read from local
files (`clip_path`, nothing is downloaded); the paper profile fails with a FileNotFoundError naming the path
when they are missing. The tiny profile runs random tiny towers: a sanity floor of the evaluation, not a
zero-shot model.

- Native 224x224 input: person images are squashed to it; `image={"size": (384, 128)}` runs them at their
  aspect ratio with the positional grid interpolated (docs/methods.md §6).
- Composed retrieval: q = normalise(f̂_img(ref) + f̂_txt(text)) with `fusion="sum"` (unit tower outputs,
  unlike clip_ft's raw sum), or the `image_only` / `text_only` query.
- No training: `trains = False`, so `fit` trains nothing and goes straight to the test run (the base class
  and the CLI skip the training loop); `validate` and `test` work as for any method.

[text] the setup and fusion are docs/methods.md §6; the rest is `fgbench.clip_dual`'s code (clip_ft's towers).
"""

from __future__ import annotations

from typing import Any, NoReturn

from fgbench.clip_dual import CLIP_PATH, ClipConfig, ClipDual, pretrained_clip
from fgbench.profiles import merge_overrides
from fgbench.registry import register_method

PROFILES: dict[str, ClipConfig] = {
    "tiny": ClipConfig(),
    "paper": ClipConfig(**pretrained_clip(size=(224, 224))),
}


@register_method("clip_zs")
class ClipZS(ClipDual):
    """Zero-shot CLIP dual encoder (no training step).

    Args:
        profile: "tiny" (random tiny towers) or "paper" (CLIP weights from `clip_path`, required).
        clip_path: CLIP weights and tokenizer (hub name in the local cache, or a folder).
        fusion: composed query from "sum", "image_only" or "text_only".
        overrides, **fields: `ClipConfig` fields replacing the profile's (e.g. `image={"size": (384, 128)}`).
    """

    published_as = "CLIP zero-shot (LAVIS re-evaluation)"  # results/published.csv
    provenance = "suite baseline"
    tasks = frozenset({"text-image", "image-text", "composed"})
    trains = False
    presets = PROFILES
    normalise_before_fusion = True

    def __init__(
        self,
        profile: str = "tiny",
        clip_path: str = CLIP_PATH,
        fusion: str = "sum",
        overrides: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(profile, clip_path, fusion, None, None, merge_overrides(overrides, fields))
        self.save_hyperparameters()

    def losses(self, batch: Any) -> NoReturn:
        raise RuntimeError(
            "clip_zs is evaluation-only (zero-shot CLIP): it has no training loss. Run `test` or `validate`; "
            "`fit` through the fgbench CLI skips training and tests."
        )
