"""Bad and unusual input to every command: one clean message, exit status 2, no traceback, nothing written.

Each case runs a command's `main(argv)` in process (argparse's own refusals exit through SystemExit(2)),
with its outputs (run roots, JSON files, output folders) pointed into a fresh folder that must be left
exactly as it was. Shared inputs (bad arrays, a tiny RSTPReid-format dataset, damaged checkpoints) are
written once per module. A few end-to-end cases run as subprocesses: the real exit status and stderr,
`--debug`, `--help`, and an ordinary fit without warnings nobody can act on.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.person import write_rstpreid

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
HAS_GPU = torch.cuda.is_available()


class Evil:
    """Unpickling it would run code (creates a file): loaders must refuse it."""

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, ("touch /tmp/fgbench-pwned",))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs shared by the cases; no case writes here."""
    w = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    np.save(w / "ok.npy", rng.normal(size=(4, 4)).astype(np.float32))
    np.save(w / "rect.npy", rng.normal(size=(3, 4)).astype(np.float32))
    np.save(w / "flat.npy", np.zeros(5, dtype=np.float32))
    np.save(w / "noq.npy", np.zeros((0, 5), dtype=np.float32))
    np.save(w / "nog.npy", np.zeros((4, 0), dtype=np.float32))
    np.save(w / "const.npy", np.ones((6, 6), dtype=np.float32))
    for name, value in (("nan", np.nan), ("inf", np.inf), ("ninf", -np.inf)):
        a = rng.normal(size=(4, 4)).astype(np.float32)
        a[1, 2] = value
        np.save(w / f"{name}.npy", a)
    np.save(w / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (w / "trunc.npy").write_bytes((w / "ok.npy").read_bytes()[:-7])
    (w / "text.npy").write_text("0.1 0.2\n0.3 0.4\n")
    (w / "empty.npy").write_bytes(b"")
    (w / "scores.csv").write_text("1,2\n3,4\n")
    np.save(w / "float_labels.npy", np.array([0.0, 1.5, 2.0, 3.0]))
    np.save(w / "bool_labels.npy", np.array([True, False, True, False]))
    np.save(w / "short_labels.npy", np.arange(3))
    np.save(w / "stranger_labels.npy", np.array([0, 1, 9, 3]))
    np.save(w / "exclude_big.npy", np.array([9, -1, -1, -1]))
    torch.save(torch.zeros(4, 4), w / "ok.pt")
    (w / "damaged.pt").write_bytes((w / "ok.pt").read_bytes()[:60])
    torch.save({"scores": torch.zeros(4, 4)}, w / "dict.pt")
    (w / "evil.pt").write_bytes(pickle.dumps(Evil()))
    (w / "bad_groups.json").write_text("{dress: [[0, 1], [0, 1]]")
    (w / "wrong_groups.json").write_text(json.dumps({"dress": [[0, 1], "all"]}))
    # checkpoints
    (w / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {}, "payload": Evil()}))
    (w / "damaged.ckpt").write_bytes((w / "ok.pt").read_bytes()[:80])
    (w / "empty.ckpt").write_bytes(b"")
    # a tiny RSTPReid-format dataset, and a damaged copy
    write_rstpreid(w / "data", n_train=4, n_val=2, n_test=2)
    write_rstpreid(w / "broken", n_train=4, n_val=2, n_test=2)
    (w / "broken" / "RSTPReid" / "data_captions.json").write_text('[{"id": 0, "img_path": ')
    # configs: a malformed YAML, a published table with the wrong columns, a run folder without config
    (w / "bad.yaml").write_text("trainer: [max_epochs: 1\n")
    (w / "published.csv").write_text("dataset,metric\nrstpreid,R1\n")
    (w / "emptyruns").mkdir()
    (w / "notarun").mkdir()
    (w / "afile.txt").write_text("not a folder\n")
    return w


FIT = [
    "--data", "datamodules.person.RSTPReidDataModule", "--data.root", "{w}/data",
    "--model", "methods.clip_ft.ClipFT",
    "--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0",
    "--run.root", "{t}/runs",
]  # fmt: skip
EVAL = ["evaluate", "--protocol", "person_t2i", "--scores"]
SWEEP = ["--seeds", "0", "--runs-root", "{t}/runs", "--out", "{t}/results"]


@dataclass(frozen=True)
class Case:
    """A command, its arguments ({w}: shared inputs, {t}: the case's own folder), the exit status, a regex
    the message must match, and a text it must not contain."""

    id: str
    command: str
    argv: tuple[str, ...]
    code: int
    says: str
    never: str = "weights_only=False"
    skip: bool = False


def c(id: str, command: str, argv: list[str], says: str, code: int = 2, **kw: object) -> Case:
    return Case(id, command, tuple(argv), code, says, **kw)  # type: ignore[arg-type]


CASES = [
    # -- python -m fgbench evaluate ----------------------------------------------------------------------
    c("eval-missing-file", "fgbench", [*EVAL, "{w}/nope.npy"], r"--scores: \S*nope\.npy not found"),
    c("eval-text-as-npy", "fgbench", [*EVAL, "{w}/text.npy"], r"text\.npy is not a NumPy \.npy file"),
    c("eval-truncated-npy", "fgbench", [*EVAL, "{w}/trunc.npy"], r"trunc\.npy is truncated.*shape \(4, 4\)"),
    c("eval-object-npy", "fgbench", [*EVAL, "{w}/obj.npy"], r"obj\.npy holds Python objects"),
    c("eval-empty-file", "fgbench", [*EVAL, "{w}/empty.npy"], r"empty\.npy is empty \(0 bytes\)"),
    c("eval-csv-extension", "fgbench", [*EVAL, "{w}/scores.csv"], r"scores\.csv has extension '\.csv'"),
    c("eval-damaged-pt", "fgbench", [*EVAL, "{w}/damaged.pt"], r"damaged\.pt is damaged or not a PyTorch"),
    c("eval-dict-pt", "fgbench", [*EVAL, "{w}/dict.pt"], r"dict\.pt holds a dict, expected a single tensor"),
    c("eval-pickle-pt", "fgbench", [*EVAL, "{w}/evil.pt"], r"evil\.pt holds objects other than tensors"),
    c("eval-1d-scores", "fgbench", [*EVAL, "{w}/flat.npy"], r"flat\.npy must be a 2-D .*shape \(5,\)"),
    c("eval-zero-queries", "fgbench", [*EVAL, "{w}/noq.npy"], r"noq\.npy has 0 queries and 5 gallery"),
    c("eval-zero-gallery", "fgbench", [*EVAL, "{w}/nog.npy"], r"nog\.npy has 4 queries and 0 gallery"),
    c("eval-nan", "fgbench", [*EVAL, "{w}/nan.npy"], r"nan\.npy holds 1 NaN or infinite.*query 1, column 2"),
    c("eval-inf", "fgbench", [*EVAL, "{w}/inf.npy"], r"inf\.npy holds 1 NaN or infinite score.*first inf"),
    c("eval-minus-inf", "fgbench", [*EVAL, "{w}/ninf.npy"], r"ninf\.npy holds 1 .* first -inf"),
    c("eval-rect-no-labels", "fgbench", [*EVAL, "{w}/rect.npy"], r"scores are 3 x 4.*--query-labels"),
    c(
        "eval-float-labels",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--query-labels", "{w}/float_labels.npy", "--gallery-labels", "{w}/ok_l.npy"],
        r"--query-labels: \S*float_labels\.npy holds non-integer values.*1\.5 at flat index 1",
    ),
    c(
        "eval-bool-labels",
        "fgbench",
        [
            *EVAL,
            "{w}/ok.npy",
            "--query-labels",
            "{w}/bool_labels.npy",
            "--gallery-labels",
            "{w}/bool_labels.npy",
        ],
        r"--query-labels: \S*bool_labels\.npy holds torch\.bool values",
    ),
    c(
        "eval-labels-missing",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--gallery-labels", "{w}/none.npy"],
        r"--gallery-labels: \S*none\.npy not found",
    ),
    c(
        "eval-labels-too-short",
        "fgbench",
        [
            *EVAL,
            "{w}/ok.npy",
            "--query-labels",
            "{w}/short_labels.npy",
            "--gallery-labels",
            "{w}/short_labels.npy",
        ],
        r"labels have 3 entries but the scores have 4 score (rows|columns)",
    ),
    c(
        "eval-query-without-positive",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--query-labels", "{w}/stranger_labels.npy"],
        r"--query-labels and --gallery-labels|no relevant gallery item",
    ),
    c(
        "eval-exclude-out-of-range",
        "fgbench",
        ["evaluate", "--protocol", "f200k", "--scores", "{w}/ok.npy", "--exclude", "{w}/exclude_big.npy"],
        r"exclude: value 9 .*not a gallery index",
    ),
    c(
        "eval-groups-not-json",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--groups", "{w}/bad_groups.json"],
        r"--groups: \S*bad_groups\.json is not valid JSON",
    ),
    c(
        "eval-groups-bad-entry",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--groups", "{w}/wrong_groups.json"],
        r"entry 'dress' must be \[\[query indices\], \[gallery indices\]\]",
    ),
    c(
        "eval-submission-not-cirr",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--submission", "{t}/sub"],
        r"--submission is only defined for protocols with a test server \(cirr\)",
    ),
    c("eval-block-rows-zero", "fgbench", [*EVAL, "{w}/ok.npy", "--block-rows", "0"], r"--block-rows must be"),
    c(
        "eval-unknown-protocol",
        "fgbench",
        ["evaluate", "--protocol", "person", "--scores", "{w}/ok.npy"],
        r"argument --protocol: invalid choice: 'person'",
    ),
    c(
        "eval-json-is-a-folder",
        "fgbench",
        [*EVAL, "{w}/ok.npy", "--json", "{t}"],
        r"Is a directory",
    ),
    c(
        "eval-names-missing",
        "fgbench",
        ["evaluate", "--protocol", "cirr", "--scores", "{w}/ok.npy", "--names", "{w}/p.txt", "{w}/i.txt"],
        r"--names PAIR_IDS: \S*p\.txt not found",
    ),
    # -- python -m fgbench (top level) and data check ----------------------------------------------------
    c("fgbench-no-command", "fgbench", [], r"required: COMMAND|the following arguments are required"),
    c("fgbench-unknown-command", "fgbench", ["frobnicate"], r"invalid choice: 'frobnicate'"),
    c("data-no-subcommand", "fgbench", ["data"], r"the following arguments are required: data_command"),
    c(
        "data-unknown-dataset",
        "fgbench",
        ["data", "check", "rstpreidd", "--root", "{w}/data"],
        r"'rstpreidd'",
    ),
    c(
        "data-root-missing",
        "fgbench",
        ["data", "check", "rstpreid", "--root", "{w}/none"],
        r"RSTPReid not found",
    ),
    c(
        "data-malformed",
        "fgbench",
        ["data", "check", "rstpreid", "--root", "{w}/broken"],
        r"data_captions\.json",
    ),
    c(
        "data-set-no-equals",
        "fgbench",
        ["data", "check", "rstpreid", "--root", "{w}/data", "--set", "sampler"],
        r"--set expects KEY=VALUE, got 'sampler'",
    ),
    c(
        "data-set-unknown-key",
        "fgbench",
        ["data", "check", "rstpreid", "--root", "{w}/data", "--set", "colour=red"],
        r"rstpreid: --set .*'colour'",
    ),
    # -- python -m fgbench fit / validate / test ---------------------------------------------------------
    c(
        "fit-override-wrong-type",
        "fgbench",
        ["fit", *FIT, "--model.init_args.overrides", "{{max_len: banana}}"],
        r"profile override max_len='banana' \(str\): expected int",
    ),
    c(
        "fit-override-wrong-length",
        "fgbench",
        ["fit", *FIT, "--model.init_args.overrides", "{{image: {{size: [64]}}}}"],
        r"image.size=\[64\] \(list\): expected tuple\[int, int\]",
    ),
    c(
        "fit-override-unknown-field",
        "fgbench",
        ["fit", *FIT, "--model.init_args.overrides", "{{max_lenn: 8}}"],
        r"unknown profile override\(s\) \['max_lenn'\]; valid: .*max_len",
    ),
    c(
        "fit-unknown-profile",
        "fgbench",
        ["fit", *FIT, "--model.init_args.profile", "huge"],
        r"profile 'huge' is not one of",
    ),
    c("fit-bad-int", "fgbench", ["fit", *FIT, "--trainer.max_epochs", "banana"], r"max_epochs.*banana"),
    c("fit-unknown-option", "fgbench", ["fit", *FIT, "--trainer.colour", "3"], r"trainer\.colour"),
    c("fit-config-missing", "fgbench", ["fit", "--config", "{w}/nope.yaml", *FIT], r"nope\.yaml"),
    c("fit-config-malformed", "fgbench", ["fit", "--config", "{w}/bad.yaml", *FIT], r"bad\.yaml|config"),
    c("fit-unknown-model", "fgbench", ["fit", *FIT, "--model", "methods.nope.Nope"], r"methods\.nope\.Nope"),
    c("fit-seed-not-int", "fgbench", ["fit", *FIT, "--seed_everything", "x"], r"seed_everything"),
    c(
        "fit-data-root-missing",
        "fgbench",
        ["fit", *FIT, "--data.root", "{w}/none"],
        r"rstpreid: \S*none/RSTPReid not found",
    ),
    c("fit-data-malformed", "fgbench", ["fit", *FIT, "--data.root", "{w}/broken"], r"data_captions\.json"),
    c(
        "fit-gpu-on-cpu-machine",
        "fgbench",
        ["fit", *FIT, "--trainer.accelerator", "gpu"],
        r"No supported gpu backend found.*--trainer\.accelerator cpu",
        skip=HAS_GPU,
    ),
    c(
        "validate-data-root-missing",
        "fgbench",
        ["validate", *FIT, "--data.root", "{w}/none"],
        r"RSTPReid not found",
    ),
    c(
        "test-ckpt-missing",
        "fgbench",
        ["test", *FIT, "--ckpt_path", "{w}/no.ckpt"],
        r"checkpoint \S*no\.ckpt not",
    ),
    c(
        "test-ckpt-damaged",
        "fgbench",
        ["test", *FIT, "--ckpt_path", "{w}/damaged.ckpt"],
        r"checkpoint \S*damaged\.ckpt is damaged or not a PyTorch checkpoint",
    ),
    c(
        "test-ckpt-pickle",
        "fgbench",
        ["test", *FIT, "--ckpt_path", "{w}/evil.ckpt"],
        r"checkpoint \S*evil\.ckpt holds objects fgbench does not load",
    ),
    c("test-ckpt-empty", "fgbench", ["test", *FIT, "--ckpt_path", "{w}/empty.ckpt"], r"empty\.ckpt is empty"),
    # -- python -m experiments.sweep ---------------------------------------------------------------------
    c(
        "sweep-unknown-method",
        "sweep",
        ["--methods", "clipft", "--datasets", "rstpreid", *SWEEP],
        r"'clipft'",
    ),
    c(
        "sweep-unknown-dataset",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreidd", *SWEEP],
        r"rstpreidd",
    ),
    c(
        "sweep-unknown-profile",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--profile", "huge", *SWEEP],
        r"unknown profile 'huge'.*available: .*tiny",
    ),
    c(
        "sweep-incompatible-pair",
        "sweep",
        ["--methods", "tirg", "--datasets", "rstpreid", *SWEEP],
        r"tirg supports composed; rstpreid is",
    ),
    c(
        "sweep-seeds-not-ints",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--seeds", "a,b"],
        r"a,b",
    ),
    c(
        "sweep-jobs-negative",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--jobs", "-1", *SWEEP],
        r"--jobs must be at least 1, got -1",
    ),
    c(
        "sweep-extra-unbalanced-quote",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--extra", '--run.variant "a', *SWEEP],
        r"--extra .* cannot be split into arguments",
    ),
    c(
        "sweep-gpu-on-cpu-machine",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--extra", "--trainer.accelerator gpu", *SWEEP],
        r"ask for a GPU \(--trainer\.accelerator gpu \(from --extra\)\) but this machine has none",
        skip=HAS_GPU,
    ),
    c(
        "sweep-devices-on-cpu-machine",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--devices", "0", *SWEEP],
        r"ask for a GPU \(--devices 0\)",
        skip=HAS_GPU,
    ),
    c(
        "sweep-paper-on-cpu-machine",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--profile", "paper", *SWEEP],
        r"--trainer\.accelerator gpu \(from profile paper",
        skip=HAS_GPU,
    ),
    c(
        "sweep-extra-bad-value",
        "sweep",
        ["--methods", "clip_ft", "--datasets", "rstpreid", "--extra", "--trainer.max_epochs banana", *SWEEP],
        r"no cell's arguments parse.*max_epochs",
    ),
    # -- python -m experiments.reproduce -----------------------------------------------------------------
    c(
        "reproduce-unknown-dataset",
        "reproduce",
        ["rstpreidd", "--profile", "tiny", *SWEEP[2:]],
        r"'rstpreidd'",
    ),
    c(
        "reproduce-no-data",
        "reproduce",
        ["rstpreid", "--profile", "tiny", "--data-root", "{w}/none", *SWEEP[2:]],
        r"cannot reproduce rstpreid: the data is not readable",
    ),
    c(
        "reproduce-unknown-profile",
        "reproduce",
        ["rstpreid", "--profile", "huge", *SWEEP[2:]],
        r"unknown profile 'huge'",
    ),
    c(
        "reproduce-gpu-on-cpu-machine",
        "reproduce",
        ["rstpreid", "--data-root", "{w}/data", *SWEEP[2:]],
        r"ask for a GPU .*profile paper",
        skip=HAS_GPU,
    ),
    c(
        "reproduce-jobs-not-int",
        "reproduce",
        ["rstpreid", "--jobs", "x"],
        r"argument --jobs: invalid int value",
    ),
    # -- python -m experiments.leaderboard ---------------------------------------------------------------
    c(
        "leaderboard-runs-root-missing",
        "leaderboard",
        ["--runs-root", "{w}/none", "--out", "{t}/out"],
        r"--runs-root \S*none is not a folder",
    ),
    c(
        "leaderboard-published-missing",
        "leaderboard",
        ["--runs-root", "{w}/emptyruns", "--out", "{t}/out", "--published", "{w}/pub.csv"],
        r"--published \S*pub\.csv not found",
    ),
    c(
        "leaderboard-published-bad-columns",
        "leaderboard",
        ["--runs-root", "{w}/emptyruns", "--out", "{t}/out", "--published", "{w}/published.csv"],
        r"published\.csv: missing columns",
    ),
    # -- python -m experiments.tune_rerank and twins -----------------------------------------------------
    c(
        "tune-run-missing",
        "tune_rerank",
        ["{w}/none", "--grid", "lam=0,0.5", "--out", "{t}/tune"],
        r"\S*none is not a folder",
    ),
    c(
        "tune-run-is-a-file",
        "tune_rerank",
        ["{w}/afile.txt", "--grid", "lam=0,0.5", "--out", "{t}/tune"],
        r"afile\.txt is not a folder",
    ),
    c(
        "tune-grid-malformed",
        "tune_rerank",
        ["{w}/notarun", "--grid", "lam", "--out", "{t}/tune"],
        r"--grid 'lam': expected NAME=V1,V2",
    ),
    c(
        "tune-run-without-config",
        "tune_rerank",
        ["{w}/notarun", "--grid", "lam=0", "--out", "{t}/tune"],
        r"notarun/config\.yaml: no config\.yaml",
    ),
    c("tune-no-grid", "tune_rerank", ["{w}/notarun", "--out", "{t}/tune"], r"required: --grid"),
    c("twins-run-missing", "twins", ["{w}/none", "--out", "{t}/twins.csv"], r"\S*none is not a folder"),
    c(
        "twins-run-without-config",
        "twins",
        ["{w}/notarun", "--out", "{t}/twins.csv"],
        r"notarun/config\.yaml: no config\.yaml",
    ),
    # -- python -m datamodules.synthetic -----------------------------------------------------------------
    c("synth-unknown-name", "synthetic", ["generate", "synth-people", "--root", "{t}/d"], r"'synth-people'"),
    c(
        "synth-size-malformed",
        "synthetic",
        ["generate", "synth-person", "--root", "{t}/d", "--size", "train_ids"],
        r"expected KEY=N \(e\.g\. train_ids=40\), got 'train_ids'",
    ),
    c(
        "synth-size-unknown-key",
        "synthetic",
        ["generate", "synth-person", "--root", "{t}/d", "--size", "ids=4"],
        r"--size: synth-person: unknown size option\(s\) \['ids'\]; valid:",
    ),
    c("synth-seed-not-int", "synthetic", ["generate", "synth-person", "--seed", "x"], r"--seed: invalid int"),
    c("synth-no-command", "synthetic", [], r"required: command"),
]


def entry(command: str) -> Callable[[list[str]], int]:
    """The `main(argv)` of a command."""
    if command == "fgbench":
        from fgbench.cli import main
    elif command == "synthetic":
        from datamodules.synthetic.__main__ import main  # type: ignore[assignment]
    else:
        import importlib

        main = importlib.import_module(f"experiments.{command}").main
    return main


def call(command: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = entry(command)(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return int(code or 0), out.out, out.err


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Log handlers made during an earlier test keep its stderr, closed since: rebind them to this one."""
    import logging

    monkeypatch.setattr(logging, "raiseExceptions", False)  # a handler pytest closed: drop, do not print
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values())]
    for log in loggers:
        for h in getattr(log, "handlers", []):
            if type(h) is logging.StreamHandler:
                h.stream = sys.stderr  # not setStream: it flushes the closed one


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_there_are_at_least_sixty_cases_across_every_command() -> None:
    assert len(CASES) >= 60 and len({k.id for k in CASES}) == len(CASES)
    assert {k.command for k in CASES} == {
        "fgbench", "sweep", "reproduce", "leaderboard", "tune_rerank", "twins", "synthetic"
    }  # fmt: skip
    subcommands = {k.argv[0] for k in CASES if k.command == "fgbench" and k.argv}
    assert {"evaluate", "data", "fit", "validate", "test"} <= subcommands


@pytest.mark.parametrize("case", CASES, ids=[k.id for k in CASES])
def test_bad_input_gets_one_clean_error(
    case: Case,
    world: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case.skip:
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FGBENCH_DEBUG", raising=False)
    np.save(world / "ok_l.npy", np.arange(4))  # the valid labels some cases pair with a bad one
    before = files(tmp_path)
    argv = [a.format(w=world, t=tmp_path) for a in case.argv]
    code, out, err = call(case.command, argv, capsys)
    text = " ".join((out + err).split())  # rich wraps long lines at the terminal width
    assert code == case.code, text
    assert re.search(case.says, text), text
    assert "Traceback" not in text, text
    assert case.never not in text
    assert files(tmp_path) == before, "the failed command left files behind"
    assert not list(world.rglob("*.tmp")) and not Path("/tmp/fgbench-pwned").exists()


def test_degenerate_scores_warn_on_the_terminal_and_the_json_is_valid(
    world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    code, _, err = call("fgbench", [*EVAL, str(world / "const.npy"), "--json", str(out)], capsys)
    assert code == 0
    assert re.search(r"warning: 6 of 6 queries \(n_tied\) have their relevant item tied", err)

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in the JSON")

    record = json.loads(out.read_text(), parse_constant=no_constants)
    assert record["details"]["n_tied"] == 6


def test_debug_flag_and_env_show_the_traceback(
    world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fgbench.cli import main
    from fgbench.errors import UserError

    argv = [*EVAL, str(world / "nan.npy")]
    with pytest.raises(UserError, match="NaN or infinite"):
        main([*argv, "--debug"])
    monkeypatch.setenv("FGBENCH_DEBUG", "1")
    with pytest.raises(UserError, match="NaN or infinite"):
        main(argv)
    monkeypatch.setenv("FGBENCH_DEBUG", "0")
    assert main(argv) == 2


def test_a_failed_cell_shows_its_cause_in_the_sweep_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from experiments import sweep

    def failing(self: sweep.Runner, fit_args: list[str], device: str | None, log: Path) -> int:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(
            "$ python -m fgbench fit ...\nSeed set to 0\nerror: rstpreid: data/RSTPReid not found.\n"
        )
        return 2

    monkeypatch.setattr(sweep.Runner, "_spawn", failing)
    argv = ["--methods", "clip_ft", "--datasets", "rstpreid", "--runs-root", str(tmp_path / "runs"),
            "--no-leaderboard"]  # fmt: skip
    assert sweep.main(argv) == 1
    out = capsys.readouterr().out
    assert "failed: rstpreid/clip_ft/tiny seed0: error: rstpreid: data/RSTPReid not found." in out


def test_override_types_follow_the_profile_dataclass() -> None:
    from fgbench.errors import ConfigError
    from methods.clip_ft import ClipFT

    assert ClipFT(overrides={"image": {"size": [64, 32]}, "max_len": 8}).hp.image.size == (64, 32)
    for bad, field in (
        ({"max_len": 8.5}, "max_len"),
        ({"pretrained": 1}, "pretrained"),
        ({"image": {"size": [64]}}, "image.size"),
        ({"image": {"encoder": 3}}, "image.encoder"),
        ({"image": {"norm": "imagenett"}}, "image.norm"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
    ):
        with pytest.raises(ConfigError, match=field):
            ClipFT(overrides=bad)


# -- end to end, as a user runs them -------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(REPO / "src"), str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])
    full = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(env or {})}
    full.pop("FGBENCH_DEBUG", None) if not env or "FGBENCH_DEBUG" not in env else None
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=full, cwd=cwd, timeout=300
    )


def test_end_to_end_exit_status_and_one_line(world: Path) -> None:
    got = run("-m", "fgbench", "evaluate", "--protocol", "person_t2i", "--scores", str(world / "trunc.npy"))
    assert got.returncode == 2 and got.stdout == ""
    assert (
        got.stderr.count("\n") == 1
        and got.stderr.startswith("error: --scores:")
        and "truncated" in got.stderr
    )
    debug = run("-m", "fgbench", "evaluate", "--protocol", "person_t2i", "--scores", str(world / "trunc.npy"),
                "--debug")  # fmt: skip
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


def test_help_lists_every_subcommand() -> None:
    got = run("-m", "fgbench", "--help")
    assert got.returncode == 0
    for name in ("fit", "validate", "test", "evaluate", "data"):
        assert re.search(rf"^\s+{name}\s+\S", got.stdout, re.M), got.stdout


def test_ordinary_fit_prints_no_warning_nobody_can_act_on(world: Path, tmp_path: Path) -> None:
    argv = [a.format(w=world, t=tmp_path) for a in FIT]
    got = run("-m", "fgbench", "fit", *argv, cwd=tmp_path)
    text = got.stdout + got.stderr
    assert got.returncode == 0, text
    assert list(tmp_path.glob("runs/rstpreid/clip_ft/tiny/seed0-*/result.json"))
    for noise in ("args parameter is intended", "litlogger", "LeafSpec", "_pytree"):
        assert noise not in text, text
