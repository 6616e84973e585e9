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

from fgbench.evaluation import EvalSpec, evaluate, list_protocols
from fgbench.evaluation.submission import write_cirr_submission
from fgbench.io import atomic_write_json, load_array

ITM = {"f30k_1k", "coco_5k", "coco_1k_5fold"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a saved score matrix with a protocol of PROTOCOLS.md")
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
        "--names",
        nargs=2,
        metavar=("PAIR_IDS", "IMAGE_NAMES"),
        help="CIRR: text files, one pair id per query row / one image name per gallery column",
    )
    p.add_argument("--block-rows", type=int, default=256)
    p.set_defaults(func=run)


def _labels(args: argparse.Namespace, q: int, g: int, console: Console) -> tuple[torch.Tensor, torch.Tensor]:
    ql = load_array(args.query_labels, "--query-labels") if args.query_labels else None
    gl = load_array(args.gallery_labels, "--gallery-labels") if args.gallery_labels else None
    if ql is None and gl is None and args.protocol in ITM and g == 5 * q:
        console.print(f"[dim]no labels given: caption column c belongs to image row c // 5 ({q} x {g})[/dim]")
        return torch.arange(q), torch.arange(g) // 5
    if (ql is None or gl is None) and q != g:
        raise SystemExit(
            f"error: scores are {q} x {g}, so the default diagonal labels do not apply; "
            "pass --query-labels and --gallery-labels"
        )
    return (torch.arange(q) if ql is None else ql), (torch.arange(g) if gl is None else gl)


def _read_names(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        return [str(x) for x in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_spec(args: argparse.Namespace, scores: torch.Tensor, console: Console) -> EvalSpec:
    if scores.dim() != 2:
        raise SystemExit(
            f"error: --scores must be a 2-D [queries, gallery] array, got shape {tuple(scores.shape)}"
        )
    q, g = scores.shape
    no_targets = args.protocol == "cirr" and bool(args.submission) and not args.query_labels
    if no_targets:  # CIRR test1: rank only, for the submission files
        ql, gl = (
            None,
            load_array(args.gallery_labels, "--gallery-labels") if args.gallery_labels else torch.arange(g),
        )
    else:
        ql, gl = _labels(args, q, g, console)
    groups = None
    if args.groups:
        raw = json.loads(Path(args.groups).read_text(encoding="utf-8"))
        groups = {k: (torch.tensor(v[0]), torch.tensor(v[1])) for k, v in raw.items()}
    qids = gnames = None
    if args.names:
        qids, gnames = _read_names(args.names[0]), _read_names(args.names[1])
    return EvalSpec(
        protocol=args.protocol,
        query_labels=None if ql is None else ql.long(),
        gallery_labels=gl.long(),
        exclude=load_array(args.exclude, "--exclude").long() if args.exclude else None,
        subsets=load_array(args.subsets, "--subsets").long() if args.subsets else None,
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


def run(args: argparse.Namespace) -> int:
    console = Console()
    scores = load_array(args.scores, "--scores")
    spec = build_spec(args, scores, console)
    result = evaluate(scores, spec, block_rows=args.block_rows, keep_lists=bool(args.submission))
    if result.metrics:
        caption = f"{scores.shape[0]} x {scores.shape[1]} scores"
        print_metrics(result.metrics, args.protocol, console, caption)
    if args.submission:
        if args.protocol != "cirr":
            raise SystemExit("error: --submission is only defined for the cirr protocol")
        if spec.query_ids is None or spec.gallery_names is None:
            raise SystemExit("error: --submission needs --names PAIR_IDS IMAGE_NAMES")
        paths = write_cirr_submission(
            result.arrays["topk"],
            result.arrays["sub_order"],
            spec.query_ids,
            spec.gallery_names,
            args.submission,
        )
        console.print(f"wrote {paths[0]} and {paths[1]}")
    if args.json_out:
        atomic_write_json(
            args.json_out, {"protocol": args.protocol, "metrics": result.metrics, "details": result.details}
        )
        console.print(f"wrote {args.json_out}")
    return 0
