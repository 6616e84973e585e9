"""Command line: `python -m datamodules.synthetic generate|preview NAME ...`.

generate: render a dataset (unless a complete copy exists) and print its folder and per-split counts.
preview: write a PNG grid of samples with their captions. `--size KEY=N` overrides a size option.
oracle: synth-person's attribute oracle (the captions' ambiguity ceiling, datamodules/synthetic/oracle.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datamodules.synthetic import GENERATORS, generate, resolve_sizes
from datamodules.synthetic.common import RECORD_FILE
from datamodules.synthetic.oracle import person_oracle
from datamodules.synthetic.preview import preview
from fgbench.errors import UserError, cli_entry

DEFAULT_ROOT = Path("data/synthetic")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datamodules.synthetic", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="render a dataset and print its folder and counts")
    show = commands.add_parser("preview", help="write a PNG grid of samples with their captions")
    show.add_argument("--out", type=Path, required=True, help="PNG file to write")
    ceiling = commands.add_parser("oracle", help="synth-person: expected R@1 of the attribute oracle")
    ceiling.add_argument("--split", default="test", choices=["train", "val", "test"])
    for sub in (gen, show, ceiling):
        names = ["synth-person"] if sub is ceiling else sorted(GENERATORS)
        sub.add_argument("name", choices=names)
        sub.add_argument(
            "--root", type=Path, default=DEFAULT_ROOT, help=f"cache folder (default {DEFAULT_ROOT})"
        )
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument(
            "--size", action="append", default=[], type=_size, metavar="KEY=N", help="override a size option"
        )
    return parser


def _size(text: str) -> tuple[str, int]:
    """'train_ids=40' -> ('train_ids', 40)."""
    key, sep, value = text.partition("=")
    if not sep or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected KEY=N (e.g. train_ids=40), got {text!r}")
    return key, int(value)


@cli_entry()
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    sizes = dict(args.size)
    try:
        resolve_sizes(args.name, **sizes)  # an unknown --size KEY is refused before anything is written
    except TypeError as err:
        raise UserError(f"--size: {err}") from None
    if args.command == "preview":
        print(preview(args.name, args.out, args.root, args.seed, **sizes))
        return
    if args.command == "oracle":
        got = person_oracle(generate(args.name, args.root, args.seed, **sizes), args.split)
        print(
            f"synth-person {args.split}: attribute oracle R1 {got['R1']:.2f} over {got['captions']} "
            f"captions; {got['identities_per_caption']:.2f} identities fit a caption on average"
        )
        return
    folder = generate(args.name, args.root, args.seed, **sizes)
    print(folder)
    counts = json.loads((folder / RECORD_FILE).read_text())["counts"]
    for split, numbers in counts.items():
        print(f"  {split}: " + ", ".join(f"{v} {k}" for k, v in numbers.items()))


if __name__ == "__main__":
    main()
