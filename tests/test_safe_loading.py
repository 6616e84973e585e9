"""Checkpoints load without unpickling arbitrary objects; a malicious one is refused with a clear message."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from method_checks import rstpreid_args

from fgbench.cli import main
from fgbench.io import check_checkpoint

from fixtures.person import write_rstpreid


def test_own_checkpoint_reloads_and_malicious_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_rstpreid(data, n_train=6)
    assert main(["fit", *rstpreid_args(data, tmp_path / "runs")]) == 0
    (ckpt,) = (tmp_path / "runs").rglob("last.ckpt")
    check_checkpoint(ckpt)  # our own checkpoints pass weights_only loading (OptimConfig is allow-listed)
    assert main(["test", *rstpreid_args(data, tmp_path / "runs2", "--ckpt_path", str(ckpt))]) == 0

    class Evil:
        def __reduce__(self):  # would run code when unpickled
            return (Path(tmp_path / "pwned").touch, ())

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {}, "payload": Evil()}))
    assert main(["test", *rstpreid_args(data, tmp_path / "runs3", "--ckpt_path", str(evil))]) == 2
    err = capsys.readouterr().err
    assert "holds objects fgbench does not load" in err and "weights_only=False" not in err
    assert not (tmp_path / "pwned").exists()
