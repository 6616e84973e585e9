"""clip_zs (methods/clip_zs.py; docs/methods.md §6): unit-norm features, CLIP's own embeddings reproduced from
a local folder, the normalised-sum composed query, no training (`fit` through the CLI only tests; the shared
checks of docs/methods.md §0: test_contract.py) and the loud failure of the paper profile without weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from method_checks import attach, encoded, eval_batches, save_tiny_clip, tiny_datamodule
from method_checks import first_batch as train_batch
from test_method_clip_ft import cli_args, result_of

from fgbench.cli import main
from fgbench.registry import DATAMODULES, METHODS
from methods.clip_zs import ClipZS


def test_registered_as_evaluation_only() -> None:
    assert METHODS.get("clip_zs") is ClipZS
    assert not ClipZS.trains and ClipZS.tasks == {"text-image", "image-text", "composed"}


@pytest.mark.parametrize("name", ["synth-person", "synth-scenes", "synth-cir"])
def test_features_have_unit_norm(root: Path, name: str) -> None:  # the shared checks: test_contract.py
    dm = tiny_datamodule(root, name)
    for f in encoded(attach(ClipZS(), dm).eval(), dm):
        torch.testing.assert_close(f.glob.norm(dim=-1), torch.ones(len(f)))


@pytest.mark.parametrize("fusion", ["sum", "image_only", "text_only"])
def test_composed_query_sums_unit_features(root: Path, fusion: str) -> None:
    dm = tiny_datamodule(root, "synth-cir")
    model = attach(ClipZS(fusion=fusion), dm).eval()
    batch = eval_batches(dm, 8)[0][0]
    with torch.no_grad():
        ref = F.normalize(model.image_out(batch.reference).glob, dim=-1)
        txt = F.normalize(model.text_out(batch.text).glob, dim=-1)
        got = model.encode_queries(batch).glob
    raw = {"sum": ref + txt, "image_only": ref, "text_only": txt}[fusion]
    torch.testing.assert_close(got, F.normalize(raw, dim=-1))


def test_losses_refuse_to_train(root: Path) -> None:
    dm = tiny_datamodule(root, "synth-person")
    model = attach(ClipZS(), dm)
    with pytest.raises(RuntimeError, match="evaluation-only"):
        model.losses(train_batch(dm))


@pytest.mark.parametrize("name", ["synth-person", "synth-cir"])
def test_fit_through_the_cli_trains_nothing_and_tests(root: Path, tmp_path: Path, name: str) -> None:
    assert main(cli_args(root, tmp_path, name, "clip_zs")) == 0
    rec = result_of(tmp_path, name, "clip_zs")
    assert rec["global_step"] == 0 and rec["metrics"]


def test_paper_profile_reproduces_clip_embeddings(root: Path, tmp_path: Path) -> None:
    from transformers import CLIPModel

    clip_dir = save_tiny_clip(tmp_path / "clip")
    dm = tiny_datamodule(root, "synth-scenes")
    model = attach(ClipZS(profile="paper", clip_path=str(clip_dir), image={"size": (32, 32)}), dm).eval()
    ref = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    queries, gallery = (batches[0] for batches in eval_batches(dm, 4))
    assert queries.text.input_ids.shape[1] == 77
    with torch.no_grad():
        q, g = model.encode_queries(queries).glob, model.encode_gallery(gallery).glob
        text = ref.get_text_features(
            input_ids=queries.text.input_ids, attention_mask=queries.text.attention_mask
        )
        image = ref.get_image_features(pixel_values=gallery.visual.pixels)
    torch.testing.assert_close(q, F.normalize(_tensor(text), dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, F.normalize(_tensor(image), dim=-1), atol=1e-5, rtol=1e-5)


def _tensor(out: object) -> torch.Tensor:
    """transformers 5 may wrap the projected features in an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


def test_paper_profile_without_weights_fails_naming_the_path(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no-clip-here"):
        attach(
            ClipZS(profile="paper", clip_path=str(tmp_path / "no-clip-here")),
            tiny_datamodule(root, "synth-person"),
        )


@pytest.mark.slow
def test_pretrained_clip_beats_chance_on_synth_scenes(root: Path) -> None:
    """With CLIP ViT-B/16 in the local HF cache (skipped otherwise): zero-shot t2i R@1 >= 3x chance."""
    from methods.clip_ft import CLIP_PATH

    model = ClipZS(profile="paper")
    sizes = {"train_images": 6, "val_images": 3, "test_images": 100}
    dm = DATAMODULES.get("synth-scenes")(root=str(root), sizes=sizes, eval_batch_size=64)
    try:
        attach(model, dm)
    except FileNotFoundError:
        pytest.skip(f"{CLIP_PATH} is not in the local HF cache")
    model.eval()
    q, g = encoded(model, dm)
    metrics = model.evaluate_features(q, g, dm.evaluation_set(dm.test_split).spec).metrics
    assert metrics["t2i_R1"] >= 3 * 100 / len(g)
