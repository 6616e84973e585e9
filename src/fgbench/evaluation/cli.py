"""`python -m fgbench evaluate`: score a matrix made anywhere with the suite's protocols.

Rows are queries and columns gallery items; for the image-text ids (f30k_1k, coco_5k, coco_1k_5fold) rows
are images and columns captions; for class_reed rows are class queries and columns test images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fgbench.errors import UserError
from fgbench.evaluation import EvalSpec, evaluate, get_protocol, list_protocols
from fgbench.evaluation.outcomes import save_outcomes
from fgbench.io import atomic_write_text, load_array, strict_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a saved [queries x gallery] score matrix with one of the suite's protocols"
    )
    p.add_argument("--protocol", required=True, choices=list_protocols())
    p.add_argument("--scores", required=True, help="float [Q, G] scores (.npy or .pt)")
    p.add_argument("--query-labels", help="int [Q] labels (default: arange)")
    p.add_argument("--gallery-labels", help="int [G] labels (default: arange; image-text: column // 5)")
    p.add_argument("--exclude", help="int [Q] gallery index removed from each query's candidates, -1 none")
    p.add_argument("--subsets", help="int [Q, M] gallery indices of each query's subset (CIRR)")
    p.add_argument(
        "--groups", help="JSON {name: [[query idx...], [gallery idx...]]} scored apart (FashionIQ)"
    )
    p.add_argument("--json", dest="json_out", help="write the metrics and details to this JSON file")
    p.add_argument("--submission", help="CIRR: write the two test-server JSON files into this folder")
    p.add_argument(
        "--outcomes",
        help="write the per-query outcomes (.npz, docs/protocols.md) to this file; ids from --names, "
        "else row and column positions",
    )
    p.add_argument(
        "--names",
        nargs=2,
        metavar=("PAIR_IDS", "IMAGE_NAMES"),
        help="text files, one id per query row / one name per gallery column (CIRR: pair ids and image "
        "names; image-text: image and caption ids of the outcomes)",
    )
    p.add_argument("--block-rows", type=int, default=256)
    p.set_defaults(func=run)


def integers(path: str | None, what: str) -> torch.Tensor | None:
    """An integer array from `path` (None when not given); non-integer values are refused, not truncated."""
    if not path:
        return None
    arr = load_array(path, what)
    if arr.dtype == torch.bool or torch.is_complex(arr):
        raise UserError(f"{what}: {path} holds {arr.dtype} values; expected integers")
    if arr.is_floating_point():
        bad = ~torch.isfinite(arr) | (arr != arr.round())
        if bad.any():
            i = int(bad.flatten().nonzero()[0])
            raise UserError(
                f"{what}: {path} holds non-integer values ({int(bad.sum())} of {arr.numel()}, first "
                f"{float(arr.flatten()[i])!r} at flat index {i}); expected integer labels or indices"
            )
    return arr.long()


def check_scores(scores: torch.Tensor, path: str) -> None:
    """Refuse what cannot be ranked: a non-2-D array, an empty side, NaN or infinite scores."""
    if scores.dim() != 2:
        raise UserError(
            f"--scores: {path} must be a 2-D [queries, gallery] array, got shape {tuple(scores.shape)}"
        )
    q, g = scores.shape
    if q == 0 or g == 0:
        raise UserError(f"--scores: {path} has {q} queries and {g} gallery items; both must be at least 1")
    if scores.dtype == torch.bool or torch.is_complex(scores):
        raise UserError(f"--scores: {path} holds {scores.dtype} values; expected real numbers")
    if scores.is_floating_point():
        bad = ~torch.isfinite(scores)
        if bad.any():
            r, c = (int(x) for x in bad.nonzero()[0])
            raise UserError(
                f"--scores: {path} holds {int(bad.sum())} NaN or infinite score(s), first "
                f"{float(scores[r, c])} at query {r}, column {c}; every score must be a finite number"
            )


def _labels(args: argparse.Namespace, q: int, g: int, console: Console) -> tuple[torch.Tensor, torch.Tensor]:
    ql = integers(args.query_labels, "--query-labels")
    gl = integers(args.gallery_labels, "--gallery-labels")
    if ql is None and gl is None and get_protocol(args.protocol).rows_are_images and g == 5 * q:
        console.print(f"[dim]no labels given: caption column c belongs to image row c // 5 ({q} x {g})[/dim]")
        return torch.arange(q), torch.arange(g) // 5
    if (ql is None or gl is None) and q != g:
        raise UserError(
            f"scores are {q} x {g}, so the default diagonal labels do not apply; "
            "pass --query-labels and --gallery-labels"
        )
    return (torch.arange(q) if ql is None else ql), (torch.arange(g) if gl is None else gl)


def _read_text(path: str, what: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{what}: {path} not found")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what}: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _read_json(path: str, what: str) -> object:
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{what}: {path} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno})"
        ) from None


def _read_names(path: str, what: str = "--names") -> list[str]:
    if path.endswith(".json"):
        raw = _read_json(path, what)
        if not isinstance(raw, list):
            raise UserError(f"{what}: {path} holds a JSON {type(raw).__name__}; expected a list of names")
        return [str(x) for x in raw]
    return [line.strip() for line in _read_text(path, what).splitlines() if line.strip()]


def read_groups(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{name: [[query idx...], [gallery idx...]]}` from a JSON file; anything else names the bad entry."""
    raw = _read_json(path, "--groups")
    if not isinstance(raw, dict) or not raw:
        raise UserError(
            f"--groups: {path} must hold a non-empty JSON object {{name: [[queries], [gallery]]}}"
        )
    groups = {}
    for name, value in raw.items():
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value)
        if not ok or not all(isinstance(i, int) and not isinstance(i, bool) for v in value for i in v):
            raise UserError(
                f"--groups: {path}: entry {name!r} must be [[query indices], [gallery indices]] of integers"
            )
        groups[name] = (torch.tensor(value[0], dtype=torch.long), torch.tensor(value[1], dtype=torch.long))
    return groups


def build_spec(args: argparse.Namespace, scores: torch.Tensor, console: Console) -> EvalSpec:
    check_scores(scores, args.scores)
    q, g = scores.shape
    to_submit = get_protocol(args.protocol).submission is not None and bool(args.submission)
    no_targets = to_submit and not args.query_labels
    if no_targets:  # CIRR test1: rank only, for the submission files
        ql, gl = (
            None,
            integers(args.gallery_labels, "--gallery-labels") if args.gallery_labels else torch.arange(g),
        )
    else:
        ql, gl = _labels(args, q, g, console)
    groups = None
    if args.groups:
        groups = read_groups(args.groups)
    qids = gnames = None
    if args.names:
        qids, gnames = (
            _read_names(args.names[0], "--names PAIR_IDS"),
            _read_names(args.names[1], "--names IMAGE_NAMES"),
        )
    return EvalSpec(
        protocol=args.protocol,
        query_labels=None if ql is None else ql.long(),
        gallery_labels=gl,
        exclude=integers(args.exclude, "--exclude"),
        subsets=integers(args.subsets, "--subsets"),
        groups=groups,
        query_ids=qids,
        gallery_names=gnames,
    )


def print_metrics(metrics: dict[str, float], title: str, console: Console, caption: str = "") -> None:
    table = Table(title=title, caption=caption or None)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.2f}")
    console.print(table)


def warn_degenerate(details: dict, protocol: str, shape: tuple[int, int]) -> None:
    """Say on the terminal when most queries' positives tie with other items (constant or coarse scores)."""
    q, g = shape
    for key, value in details.items():
        if not key.endswith("n_tied") or not isinstance(value, int):
            continue
        captions_query = get_protocol(protocol).rows_are_images and not key.startswith("i2t")  # image-text
        queries = g if captions_query else q
        if value * 2 > queries:
            Console(stderr=True).print(
                f"[yellow]warning: {value} of {queries} queries ({key}) have their relevant item tied with "
                "other items; "
                "the scores barely rank the gallery (constant or heavily rounded?), so these metrics say "
                "little[/yellow]"
            )
            return


def run(args: argparse.Namespace) -> int:
    console = Console()
    scores = load_array(args.scores, "--scores")
    spec = build_spec(args, scores, console)
    if args.block_rows < 1:
        raise UserError(f"--block-rows must be at least 1, got {args.block_rows}")
    protocol = get_protocol(args.protocol)
    if args.submission and protocol.submission is None:
        with_one = ", ".join(p for p in list_protocols() if get_protocol(p).submission) or "none"
        raise UserError(f"--submission is only defined for protocols with a test server ({with_one})")
    result = evaluate(scores, spec, block_rows=args.block_rows, keep_lists=bool(args.submission))
    warn_degenerate(result.details, args.protocol, (scores.shape[0], scores.shape[1]))
    if result.metrics:
        caption = f"{scores.shape[0]} x {scores.shape[1]} scores"
        print_metrics(result.metrics, args.protocol, console, caption)
    if args.submission:
        if spec.query_ids is None or spec.gallery_names is None:
            raise UserError("--submission needs --names PAIR_IDS IMAGE_NAMES")
        paths = protocol.submission(result, spec, Path(args.submission))
        if not paths:
            raise UserError("--submission: the result kept no ranked lists to submit")
        console.print("wrote " + " and ".join(str(p) for p in paths))
    if args.outcomes:
        if result.outcomes is None:
            raise UserError(f"--outcomes: protocol {args.protocol} without targets has no per-query outcomes")
        console.print(f"wrote {save_outcomes(args.outcomes, result.outcomes)}")
    if args.json_out:
        record = {"protocol": args.protocol, "metrics": result.metrics, "details": result.details}
        atomic_write_text(args.json_out, strict_json(record, f"--json {args.json_out}"))
        console.print(f"wrote {args.json_out}")
    return 0
