"""`python -m fgbench evaluate`: files in, the same numbers as the library, CIRR submission files out."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fgbench.cli import main
from fgbench.evaluation import EvalSpec, evaluate


def test_person_from_npy_and_pt_match_the_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    S = rng.normal(size=(12, 9)).astype(np.float32)
    gl = rng.integers(0, 4, size=9)
    ql = rng.choice(gl, size=12)
    np.save(tmp_path / "S.npy", S)
    torch.save(torch.from_numpy(ql), tmp_path / "QL.pt")
    np.save(tmp_path / "GL.npy", gl)
    out = tmp_path / "out.json"
    args = [
        "evaluate",
        "--protocol",
        "person_t2i",
        "--scores",
        str(tmp_path / "S.npy"),
        "--query-labels",
        str(tmp_path / "QL.pt"),
        "--gallery-labels",
        str(tmp_path / "GL.npy"),
        "--json",
        str(out),
    ]
    assert main(args) == 0
    got = json.loads(out.read_text())["metrics"]
    want = evaluate(
        torch.from_numpy(S), EvalSpec("person_t2i", torch.from_numpy(ql), torch.from_numpy(gl))
    ).metrics
    assert got == pytest.approx(want)


def test_default_labels_need_a_square_matrix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "S.npy", np.zeros((3, 4), dtype=np.float32))
    assert main(["evaluate", "--protocol", "person_t2i", "--scores", str(tmp_path / "S.npy")]) == 2
    assert "default diagonal labels do not apply" in capsys.readouterr().err


def test_pickled_inputs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["evaluate", "--protocol", "person_t2i", "--scores", str(tmp_path / "obj.npy")]) == 2
    assert "would need unpickling" in capsys.readouterr().err

    class Evil:
        def __reduce__(self):  # would run code when unpickled
            return (Path(tmp_path / "pwned").touch, ())

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    assert main(["evaluate", "--protocol", "person_t2i", "--scores", str(tmp_path / "evil.pt")]) == 2
    assert "holds objects other than tensors" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_cirr_submission_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nq, ng = 8, 60
    S = rng.normal(size=(nq, ng)).astype(np.float32)
    sub = np.stack([rng.choice(ng, size=6, replace=False) for _ in range(nq)])
    ref = sub[:, 0]
    np.save(tmp_path / "S.npy", S)
    np.save(tmp_path / "EX.npy", ref)
    np.save(tmp_path / "SUB.npy", sub)
    (tmp_path / "pairs.txt").write_text("\n".join(str(100 + i) for i in range(nq)))
    names = [f"test1-{j}-0-img0" for j in range(ng)]
    (tmp_path / "names.txt").write_text("\n".join(names))
    assert (
        main(
            [
                "evaluate",
                "--protocol",
                "cirr",
                "--scores",
                str(tmp_path / "S.npy"),
                "--exclude",
                str(tmp_path / "EX.npy"),
                "--subsets",
                str(tmp_path / "SUB.npy"),
                "--submission",
                str(tmp_path / "sub"),
                "--names",
                str(tmp_path / "pairs.txt"),
                str(tmp_path / "names.txt"),
            ]
        )
        == 0
    )
    recall = json.loads((tmp_path / "sub" / "recall_submission_fgbench.json").read_text())
    subset = json.loads((tmp_path / "sub" / "recall_subset_submission_fgbench.json").read_text())
    assert recall["version"] == subset["version"] == "rc2"
    assert (recall["metric"], subset["metric"]) == ("recall", "recall_subset")
    for q in range(nq):
        top, top3 = recall[str(100 + q)], subset[str(100 + q)]
        assert len(top) == 50 == len(set(top)) and len(top3) == 3
        assert names[ref[q]] not in top and names[ref[q]] not in top3
        order = sorted((j for j in range(ng) if j != ref[q]), key=lambda j: (-S[q, j], j))
        assert top == [names[j] for j in order[:50]]
        members = sorted((int(j) for j in sub[q, 1:]), key=lambda j: (-S[q, j], j))
        assert top3 == [names[j] for j in members[:3]]
