"""experiments.twins: the synth-scenes twin test on a trained tiny run, checked against the score matrix."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_method_teran import cli_run

from experiments import twins
from experiments.tune_rerank import load_run

SCENES = {"train_images": 8, "val_images": 4, "test_images": 24}


def test_twin_trials_match_the_score_matrix(tmp_path: Path) -> None:
    data = [
        "--data",
        "datamodules.synthetic.datamodules.SynthScenesDataModule",
        "--data.root",
        str(tmp_path / "d"),
    ]
    rec = cli_run(tmp_path, [*data, "--data.sizes", json.dumps(SCENES)])
    run = Path(rec["run_dir"])
    trials = twins.run_trials(run)
    assert len(trials) and set(trials["kind"]) <= {"relation", "colour", "shape", "size"}
    assert (trials["own"] != trials["twin"]).all() and trials["method"].eq("teran").all()
    # every trial is one caption against its own scene and that scene's twin: check with the full matrix
    model, dm = load_run(run)
    with torch.no_grad():
        q, g, spec = model.encode_split(dm, dm.test_split)
        S = model.score(q, g)  # captions x images
    assert (spec.gallery_labels[trials["caption"].to_numpy()] == torch.tensor(trials["own"].to_numpy())).all()
    own = S[trials["caption"], trials["own"]]
    other = S[trials["caption"], trials["twin"]]
    want = (own > other).double() + 0.5 * (own == other).double()
    torch.testing.assert_close(torch.tensor(trials["passed"].to_numpy(), dtype=torch.double), want)
    out = tmp_path / "twins.csv"
    assert twins.main([str(run), "--out", str(out)]) == 0
    stats = pd.read_csv(out)
    for kind, part in trials.groupby("kind"):
        row = stats[stats["kind"] == kind].iloc[0]
        assert row["acc"] == pytest.approx(100 * part["passed"].mean()) and row["trials"] == len(part)


def test_a_run_on_other_data_is_refused(tmp_path: Path) -> None:
    data = [
        "--data",
        "datamodules.synthetic.datamodules.SynthPersonDataModule",
        "--data.root",
        str(tmp_path / "d"),
    ]
    sizes = {"train_ids": 4, "val_ids": 2, "test_ids": 2, "images_per_id": 2}
    rec = cli_run(tmp_path, [*data, "--data.sizes", json.dumps(sizes)])
    with pytest.raises(ValueError, match="needs synth-scenes"):
        twins.run_trials(Path(rec["run_dir"]))
