"""`python -m experiments.reproduce DATASET --data-root DIR`: the paper-profile sweep of every method.

What `make reproduce-<dataset>` runs. Before any training it reads the dataset through its DataModule (the
same validation as `python -m fgbench data check`), so a missing or misplaced dataset stops the target in
seconds with the expected layout and the check command, instead of failing once per cell. Then it runs
`experiments.sweep --methods all --datasets DATASET --profile paper` with `--data.root DIR` added to every
cell, which resumes like any sweep and ends by building the leaderboards.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.sweep import CONFIGS, GridError, accelerator_problem, config_class
from fgbench.errors import cli_entry

EXIT_NO_DATA = 2


def data_problem(name: str, data_root: Path, configs: Path = CONFIGS) -> str | None:
    """Why `name` cannot be read under `data_root` (with the expected layout), or None when it loads."""
    import yaml

    from fgbench.data.validation import DatasetError

    path = configs / "data" / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (configs / "data").glob("*.yaml")))
        return f"unknown dataset {name!r}: no {path}; available: {known}"
    cls = config_class(path, "data")
    init = dict(yaml.safe_load(path.read_text(encoding="utf-8"))["data"].get("init_args") or {})
    init["root"] = str(data_root)
    try:
        cls(**init).setup()
    except (DatasetError, FileNotFoundError, ValueError) as err:
        text = str(err)
        layout = getattr(cls, "layout", "")
        if layout and layout.strip() not in text:
            text += f"\nExpected layout under the dataset root:\n{layout.rstrip()}"
        return text
    return None


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n")[0])
    p.add_argument("dataset", help="registry name, e.g. rstpreid")
    p.add_argument("--data-root", default="data", help="folder holding the dataset's folder (default data)")
    p.add_argument("--profile", default="paper")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--devices", default="")
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--out", default="results")
    p.add_argument("--extra", default="", help="more fit arguments for every cell")
    p.add_argument("--launcher", default="local", choices=["local", "slurm"], help="as in experiments.sweep")
    p.add_argument("--slurm-config", default="", help="SLURM settings file (--launcher slurm)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE", help="a SLURM setting")
    p.add_argument("--throttle", default=None, help="SLURM: at most N cells at once")
    args = p.parse_args(argv)
    root = Path(args.data_root)
    profile = CONFIGS / "profile" / f"{args.profile}.yaml"
    if not profile.is_file():
        known = ", ".join(sorted(f.stem for f in profile.parent.glob("*.yaml")))
        raise GridError(f"unknown profile {args.profile!r}: no {profile}; available: {known}")
    problem = data_problem(args.dataset, root)
    if problem:
        print(f"error: cannot reproduce {args.dataset}: the data is not readable under {root}\n{problem}")
        print(f"\nPut the dataset there (DATA_ROOT={root}), then check it with:")
        print(f"    python -m fgbench data check {args.dataset} --root {shlex.quote(str(root))}")
        return EXIT_NO_DATA
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    # local cells run on this machine; SLURM cells run on compute nodes (the sweep checks its settings)
    problem = args.launcher == "local" and accelerator_problem(profile, shlex.split(args.extra), devices)
    if problem:
        raise GridError(problem)
    from experiments import sweep

    sweep_args = [
        "--methods", "all", "--datasets", args.dataset, "--seeds", args.seeds, "--profile", args.profile,
        "--runs-root", args.runs_root, "--out", args.out, "--devices", args.devices,
        "--extra", f"--data.root {shlex.quote(str(root))} {args.extra}".strip(),
    ]  # fmt: skip
    if args.jobs:
        sweep_args += ["--jobs", str(args.jobs)]
    sweep_args += [
        "--launcher",
        args.launcher,
        *(["--slurm-config", args.slurm_config] if args.slurm_config else []),
    ]
    sweep_args += [f"--slurm={item}" for item in args.slurm]
    if args.throttle:
        sweep_args += ["--throttle", str(args.throttle)]
    return sweep.main(sweep_args)


if __name__ == "__main__":
    sys.exit(main())
