"""`python -m experiments.show RUN [--split test] [--n 8] [--k 5] [--worst | --random | --query ID ...]
[--direction t2i|i2t] [--out DIR]`: see what a trained model retrieves.

RUN is a run folder (`runs/<dataset>/<method>/<profile>/seed<k>-<hash>/`, written by `fgbench fit`): its
`config.yaml` rebuilds the DataModule and `checkpoints/last.ckpt` (or `--ckpt`) the method. The split is
encoded once (`encode_split`) and ranked by the evaluator itself (`direction_stats`: a stable descending
order, ties by gallery index, the query's excluded item removed, FashionIQ categories ranked apart, the
method's re-rank shortlist re-scored), so what is shown is what the metrics counted.

Each shown query (a caption; a class with its captions for class-level retrieval; a reference image and its
modification text for composed retrieval; an image with its ground truth for image-to-text) comes with its
top-k gallery items, the score under each, the relevant ones framed green, and the rank of its first relevant
item. Queries are the `--worst` (first relevant item ranked lowest), a seeded `--random` draw (the default),
or the ones named by `--query` (the split's stable query id where it has one, else the row index).

Writes `<out>/<split>_<mode>.png` (a matplotlib grid) and `<out>/<split>_<mode>.html` (self-contained:
thumbnails embedded as base64, text escaped); `--out` defaults to `RUN/show/`.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from experiments.tune_rerank import CHECKPOINT, load_datamodule
from fgbench.data.datasets import ComposedQueryDataset, TextDataset, VisualDataset
from fgbench.data.module import RetrievalDataModule
from fgbench.data.validation import DatasetError
from fgbench.ensemble import Ensemble
from fgbench.errors import UserError, cli_entry
from fgbench.evaluation import FunctionSource, ScoreSource, get_protocol
from fgbench.evaluation.engine import Direction, Options, direction_stats
from fgbench.io import atomic_write_bytes, atomic_write_text
from fgbench.method import RetrievalMethod
from fgbench.results import RESULT_FILE, read_result

DIRECTIONS = ("t2i", "i2t")
THUMB = 160  # longest side of an HTML thumbnail, pixels


# -- what one item looks like -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Item:
    """One cell: an image file and/or a text, and a short name (file name, caption index, class)."""

    image: Path | None = None
    text: str = ""
    name: str = ""


ItemFn = Callable[[Any, int], Item]
ITEM_VIEWS: dict[type, ItemFn] = {}


def item_view(cls: type) -> Callable[[ItemFn], ItemFn]:
    """Register how the items of an evaluation dataset class are shown."""

    def deco(fn: ItemFn) -> ItemFn:
        ITEM_VIEWS[cls] = fn
        return fn

    return deco


def store_image(store: Any, j: int) -> Path | None:
    """The image file of a visual store's item j; None for stores of precomputed region features."""
    paths = getattr(store, "paths", None)
    return None if paths is None else Path(paths[j])


@item_view(TextDataset)
def _caption(ds: TextDataset, i: int) -> Item:
    return Item(text=ds.captions[i], name=f"caption {i}")


@item_view(VisualDataset)
def _visual(ds: VisualDataset, i: int) -> Item:
    path = store_image(ds.store, ds.ids[i])
    return Item(image=path, name=path.name if path else f"image {i} (region features, no image file)")


@item_view(ComposedQueryDataset)
def _composed(ds: ComposedQueryDataset, i: int) -> Item:
    path = store_image(ds.store, ds.ref_ids[i])
    return Item(image=path, text=ds.texts[i], name=f"reference {path.name if path else ds.ref_ids[i]}")


def describe(ds: Any, i: int) -> Item:
    """Item i of an evaluation dataset, through the view registered for its class (or a base class)."""
    for cls in type(ds).__mro__:
        if cls in ITEM_VIEWS:
            return ITEM_VIEWS[cls](ds, i)
    raise TypeError(f"no view registered for evaluation dataset {type(ds).__name__}")


# -- one retrieval direction ------------------------------------------------------------------------------


@dataclasses.dataclass
class Side:
    """The queries or the gallery of a direction: how many, how each looks, labels and stable ids."""

    n: int
    item: Callable[[int], Item]
    labels: Tensor | None
    ids: list[str] | None = None

    def id(self, i: int) -> str:
        return self.ids[i] if self.ids is not None else str(i)


@dataclasses.dataclass
class Task:
    """A direction ready to rank: scores (rows = queries), both sides, exclusions, groups, re-rank."""

    protocol: str
    direction: str
    source: ScoreSource
    rows: Side
    cols: Side
    exclude: Tensor | None = None
    groups: dict[str, tuple[Tensor, Tensor]] | None = None
    rerank_k: int | None = None

    def views(self) -> list[tuple[Tensor, Tensor]]:
        """(query indices, gallery indices) ranked apart: FashionIQ categories, COCO 1K folds, else all."""
        if self.groups:
            return [(q.long().cpu(), g.long().cpu()) for q, g in self.groups.values()]
        return [(torch.arange(self.rows.n), torch.arange(self.cols.n))]


def _ids(ids: list[str] | None, n: int) -> list[str] | None:
    return [str(x) for x in ids] if ids is not None and len(ids) == n else None


def class_side(es: Any, spec: Any, labels: Tensor) -> Side:
    """Class queries (class_reed): the class name and the first captions of the class."""
    names = dict(zip(spec.info.get("class_labels", []), spec.info.get("classes", []), strict=False))
    captions: dict[int, list[str]] = {}
    for c, lab in zip(es.queries.captions, spec.query_labels.tolist(), strict=True):
        captions.setdefault(int(lab), []).append(c)
    names_by_row = [str(names.get(int(lab), f"class {int(lab)}")) for lab in labels.tolist()]

    def item(i: int) -> Item:
        caps = captions[int(labels[i])]
        return Item(text=" / ".join(caps[:2]), name=names_by_row[i])

    return Side(len(names_by_row), item, labels, names_by_row)


def fold_groups(img_labels: Tensor, cap_labels: Tensor, direction: str) -> dict[str, tuple[Tensor, Tensor]]:
    """COCO 1K x 5 folds as groups: fold f is image rows f*n/5.. with their captions, ranked apart."""
    n = img_labels.numel()
    size = n // 5
    out = {}
    for f in range(5):
        img = torch.arange(f * size, (f + 1) * size)
        caps = torch.nonzero(torch.isin(cap_labels.cpu(), img_labels.cpu()[img])).squeeze(1)
        out[f"fold {f + 1}"] = (caps, img) if direction == "t2i" else (img, caps)
    return out


def build_task(model: RetrievalMethod, dm: RetrievalDataModule, split: str, direction: str | None) -> Task:
    """Encode `split` and set up the direction the evaluator ranks (image-text: both are offered)."""
    with torch.no_grad():
        q, g, spec = model.encode_split(dm, split)
    es = dm.evaluation_set(split)
    composed = es.query_kind == "composed"
    rows_are_images = get_protocol(spec.protocol).rows_are_images
    direction = direction or ("i2t" if rows_are_images else "t2i")
    if direction == "i2t" and composed:
        raise UserError(f"--direction i2t: {spec.protocol} is composed retrieval; its only direction is t2i")
    text_labels, image_labels = (
        (spec.gallery_labels, spec.query_labels)
        if rows_are_images
        else (spec.query_labels, spec.gallery_labels)
    )
    images = Side(len(es.gallery), lambda i: describe(es.gallery, i), image_labels)
    if rows_are_images:
        images.ids = _ids(spec.query_ids, images.n)
        texts = Side(len(es.queries), lambda i: describe(es.queries, i), text_labels)
    elif get_protocol(spec.protocol).pooled_queries:
        assert spec.query_labels is not None
        q, labels = model.pool_queries(q, spec.query_labels)
        texts = class_side(es, spec, labels.cpu())
    else:
        texts = Side(
            len(es.queries), lambda i: describe(es.queries, i), text_labels, _ids(spec.query_ids, len(q))
        )
        images.ids = _ids(spec.gallery_names, images.n)
    source = FunctionSource(
        lambda r, c: model.score(q.take(r), g.take(c)),
        len(q),
        len(g),
        col_block=model.eval_col_block,
        pair_fn=lambda r, c: model.rescore_pairs(q.take(r.flatten()), g.take(c.flatten())).view(r.shape),
        device=q.index.device,
    )
    groups = spec.groups
    if spec.protocol == "coco_1k_5fold":
        assert spec.query_labels is not None
        groups = fold_groups(spec.query_labels, spec.gallery_labels, direction)
    if direction == "t2i":
        exclude = None if rows_are_images else spec.exclude
        return Task(spec.protocol, direction, source, texts, images, exclude, groups, model.rerank_k)
    return Task(spec.protocol, direction, source.T, images, texts, None, groups, model.rerank_k)


# -- ranking, by the evaluator ------------------------------------------------------------------------------


@dataclasses.dataclass
class Ranking:
    """Per query: its top-k gallery indices (-1 = fewer candidates), their scores and relevance, and the
    0-based rank of its first relevant item (-1 without targets)."""

    rows: Tensor
    topk: Tensor
    scores: Tensor
    relevant: Tensor
    first: Tensor


def rank(task: Task, rows: Tensor, k: int) -> Ranking:
    """Rank `rows` with the evaluator's own `direction_stats` (top-k lists and first relevant ranks)."""
    n = rows.numel()
    topk = torch.full((n, k), -1, dtype=torch.long)
    first = torch.full((n,), -1, dtype=torch.long)
    labelled = task.rows.labels is not None
    for qi, gi in task.views():
        sel = torch.nonzero(torch.isin(rows, qi)).squeeze(1)
        if sel.numel() == 0:
            continue
        sub = rows[sel]
        exclude = None
        if task.exclude is not None:
            inv = torch.full((task.cols.n,), -1, dtype=torch.long)
            inv[gi] = torch.arange(gi.numel())
            ex = task.exclude.cpu()[sub]
            exclude = torch.where(ex >= 0, inv[ex.clamp(min=0)], ex)
        kk = min(k, gi.numel() - (1 if exclude is not None and bool((exclude >= 0).any()) else 0))
        d = Direction(
            source=task.source.select(sub, gi),
            row_labels=task.rows.labels.cpu()[sub] if labelled else None,  # type: ignore[union-attr]
            col_labels=task.cols.labels.cpu()[gi] if task.cols.labels is not None else torch.zeros_like(gi),
            exclude=exclude,
            topk=kk,
            name=task.direction,
        )
        st = direction_stats(d, Options(rerank_k=task.rerank_k, distributed=False))
        topk[sel, :kk] = gi[st["topk"]]
        if labelled:
            first[sel] = st["first"]
    scores = torch.full((n, k), float("nan"))
    relevant = torch.zeros((n, k), dtype=torch.bool)
    with torch.no_grad():
        for i in range(n):
            items = topk[i][topk[i] >= 0]
            row = rows[i : i + 1]
            s = task.source.scores(row.to(task.source.device), items.to(task.source.device))[0].cpu()
            if task.rerank_k:  # the shortlist is ordered by its re-scores: show those
                m = min(task.rerank_k, items.numel())
                pair = task.source.pair_scores(row.expand(m)[None].to(task.source.device), items[None, :m])
                s[:m] = pair[0].cpu()
            scores[i, : items.numel()] = s
            if labelled and task.cols.labels is not None:
                lab = task.rows.labels[rows[i]].cpu()  # type: ignore[index]
                relevant[i, : items.numel()] = task.cols.labels.cpu()[items] == lab
    return Ranking(rows, topk, scores, relevant, first)


# -- which queries ------------------------------------------------------------------------------------------


def resolve_queries(side: Side, wanted: Sequence[str]) -> Tensor:
    """Row indices of `--query` values: a stable query id of the split, else an integer row index."""
    index = {x: i for i, x in enumerate(side.ids)} if side.ids is not None else {}
    out = []
    for w in wanted:
        if w in index:
            out.append(index[w])
        elif w.lstrip("-").isdigit() and 0 <= int(w) < side.n:
            out.append(int(w))
        else:
            known = ", ".join((side.ids or [str(i) for i in range(side.n)])[:5])
            kind = "a query id of this split or" if side.ids is not None else ""
            raise UserError(
                f"--query {w}: unknown query; expected {kind} a row index in [0, {side.n})"
                f" (ids start: {known})"
            )
    return torch.tensor(out, dtype=torch.long)


def choose(task: Task, mode: str, n: int, k: int, seed: int, wanted: Sequence[str]) -> Ranking:
    """The ranking of the shown queries, in display order."""
    if mode == "query":
        return rank(task, resolve_queries(task.rows, wanted), k)
    if mode == "random":
        gen = torch.Generator().manual_seed(seed)
        return rank(task, torch.randperm(task.rows.n, generator=gen)[: min(n, task.rows.n)], k)
    if task.rows.labels is None:
        raise UserError("--worst needs the split's targets; this split has none (use --random or --query)")
    full = rank(task, torch.arange(task.rows.n), k)
    order = torch.sort(full.first, descending=True, stable=True).indices[:n]  # ties: lower query first
    return Ranking(*(getattr(full, f.name)[order] for f in dataclasses.fields(Ranking)))


# -- what is drawn ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    item: Item
    rank: int  # 1-based
    score: float
    relevant: bool
    index: int  # gallery index


@dataclasses.dataclass
class Row:
    qid: str
    index: int
    query: Item
    first: int | None  # 1-based rank of the first relevant item
    cells: list[Cell]
    group: str = ""  # the gallery it was ranked in (a FashionIQ category, a COCO fold), if not the whole one

    @property
    def title(self) -> str:
        return f"query {self.qid}" + (f" ({self.group})" if self.group else "")


def rows_to_show(task: Task, r: Ranking) -> list[Row]:
    out = []
    group = {i: name for name, (qi, _) in (task.groups or {}).items() for i in qi.tolist()}
    for i, q in enumerate(r.rows.tolist()):
        query = task.rows.item(q)
        if task.direction == "i2t" and task.rows.labels is not None and task.cols.labels is not None:
            truth = torch.nonzero(task.cols.labels.cpu() == task.rows.labels[q].cpu()).squeeze(1)[:3]
            texts = [task.cols.item(int(j)).text or task.cols.item(int(j)).name for j in truth]
            query = dataclasses.replace(query, text="ground truth: " + " / ".join(texts))
        cells = [
            Cell(task.cols.item(j), p + 1, float(r.scores[i, p]), bool(r.relevant[i, p]), j)
            for p, j in enumerate(r.topk[i].tolist())
            if j >= 0
        ]
        first = int(r.first[i]) + 1 if int(r.first[i]) >= 0 else None
        out.append(Row(task.rows.id(q), q, query, first, cells, group.get(q, "")))
    return out


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def _wrap(text: str, width: int, lines: int) -> str:
    out = textwrap.wrap(text, width=width) or [""]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: max(0, width - 1)] + "…"
    return "\n".join(out)


CELL_W = 1.45  # inches per gallery column (the query column is QUERY_W times wider)
QUERY_W = 1.8
LINE_H = 0.105  # inches per text line at the cell font size
HEAD_H = 0.2  # inches of the head line (query id / rank and score)
CHARS = {True: 44, False: 24}  # wrap width of the query cell, of a gallery cell
MAX_LINES = {True: 9, False: 14}


def cell_text(item: Item) -> str:
    """The text drawn in a PNG cell: an image's own text (a modification text, ground truth), or for a
    text item its text (its name when it has none)."""
    return item.text or ("" if item.image is not None else item.name)


def render_png(rows: list[Row], title: str, k: int) -> bytes:
    """A grid: one line per query (query cell, then its top-k), scores under the items, relevant framed.

    Row height follows the content: the tallest image at column width (at most 2 inches) and the longest
    wrapped text of the grid (capped, the rest elided)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [(True, r.query) for r in rows] + [(False, c.item) for r in rows for c in r.cells]
    sizes = {it.image: _open_rgb(it.image).size for _, it in cells if it.image is not None}
    img_h = min(2.0, max([CELL_W * 0.96 * h / w for w, h in sizes.values()], default=0.0))
    lines = max(len(_wrap(cell_text(it), CHARS[q], MAX_LINES[q]).splitlines()) for q, it in cells)
    lines = lines if any(cell_text(it) for _, it in cells) else 0
    cell_h = img_h + 0.08 + HEAD_H + lines * LINE_H + 0.06
    ratios = [QUERY_W] + [1.0] * k
    fig = plt.figure(figsize=(CELL_W * sum(ratios), cell_h * len(rows)))
    grid = fig.add_gridspec(len(rows), k + 1, width_ratios=ratios, wspace=0.08, hspace=0.1)
    for r, row in enumerate(rows):
        for c in range(k + 1):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.axis("off")
            box = (CELL_W * ratios[c], cell_h, img_h)
            if c == 0:
                head = row.title + (f" · first relevant: #{row.first}" if row.first else "")
                _draw(ax, row.query, head, cell_text(row.query), box, query=True)
            elif c - 1 < len(row.cells):
                cell = row.cells[c - 1]
                head = f"#{cell.rank}  {cell.score:.3f}"
                _draw(ax, cell.item, head, cell_text(cell.item), box, relevant=cell.relevant)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1)
    fig.text(0.5, 1.0 + 0.1 / (cell_h * len(rows)), title, ha="center", va="bottom", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _draw(
    ax: Any,
    item: Item,
    head: str,
    text: str,
    box: tuple[float, float, float],
    query: bool = False,
    relevant: bool = False,
) -> None:
    """One cell of `box` = (width, height, image height) inches: the image fitted (aspect kept) at the top,
    then the head line and the wrapped text; a query cell shaded, a relevant item framed green."""
    from matplotlib.patches import Rectangle

    w_in, h_in, img_h = box
    if query:
        ax.add_patch(Rectangle((0, 0), 1, 1, color="#eef1f6", zorder=0))
    top = 1.0 - 0.04 / h_in
    if item.image is not None:
        img = _open_rgb(item.image)
        iw, ih = img.size
        scale = min(w_in * 0.96 / iw, img_h / ih)
        bw, bh = iw * scale / w_in, ih * scale / h_in
        x0, y0 = (1 - bw) / 2, top - bh
        ax.imshow(img, extent=(x0, x0 + bw, y0, y0 + bh), aspect="auto", zorder=1)
        top -= (img_h + 0.04) / h_in  # text-only cells start at the top
    ax.text(0.5, top, head, ha="center", va="top", fontsize=7, weight="bold" if query else "normal", zorder=2)
    if text:
        big = query and item.image is None  # a caption query has the whole cell: larger type
        body = _wrap(text, 34 if big else CHARS[query], MAX_LINES[query])
        size = 8.0 if big else 6.3
        ax.text(
            0.5, top - HEAD_H / h_in, body, ha="center", va="top", fontsize=size, zorder=2, linespacing=1.2
        )
    if relevant:
        ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, edgecolor="#1a9e3a", linewidth=3.5, zorder=3))


_CSS = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:separate;border-spacing:6px}
td{vertical-align:top;width:170px;padding:4px;border:3px solid transparent;font-size:12px}
td.query{background:#eef1f6;width:240px}
td.relevant{border-color:#1a9e3a}
.score{font-weight:bold}
img{max-width:160px;max-height:160px;display:block;margin:0 auto 4px}
.meta{color:#555;font-size:13px}
"""


def thumbnail(path: Path) -> str:
    """A JPEG thumbnail of an image file as a data URI (a PNG of a noisy image is several times larger)."""
    img = _open_rgb(path)
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell_html(item: Item) -> str:
    e = html.escape
    parts = []
    if item.image is not None:
        parts.append(f'<img src="{thumbnail(item.image)}" alt="{e(item.name)}" title="{e(item.name)}">')
    if item.text:
        parts.append(f'<div class="text">{e(item.text)}</div>')
    elif item.image is None:
        parts.append(f'<div class="text">{e(item.name)}</div>')
    return "".join(parts)


def render_html(rows: list[Row], title: str, meta: list[str]) -> str:
    """A self-contained page: thumbnails embedded, every text escaped, machine-readable data attributes."""
    e = html.escape
    out = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{e(title)}</title><style>{_CSS}</style></head><body>',
        f"<h1>{e(title)}</h1>",
        *[f'<p class="meta">{e(m)}</p>' for m in meta],
        "<table>",
    ]
    for row in rows:
        first = "" if row.first is None else str(row.first)
        out.append(
            f'<tr class="row" data-query="{e(row.qid)}" data-index="{row.index}" data-first="{first}">'
        )
        rank_text = f"first relevant item at rank {row.first}" if row.first else "no targets"
        out.append(
            f'<td class="query"><div class="score">{e(row.title)}</div>{_cell_html(row.query)}'
            f'<div class="meta">{e(rank_text)}</div></td>'
        )
        for c in row.cells:
            cls = "item relevant" if c.relevant else "item"
            out.append(
                f'<td class="{cls}" data-index="{c.index}" data-rank="{c.rank}" data-score="{c.score:.6g}">'
                f'<div class="score">#{c.rank} · {c.score:.4f}</div>{_cell_html(c.item)}'
                f'<div class="meta">{e(c.item.name)}</div></td>'
            )
        out.append("</tr>")
    out += ["</table>", "</body></html>", ""]
    return "\n".join(out)


# -- the command ---------------------------------------------------------------------------------------------


def load(run: Path, ckpt: Path | None, data_root: Path | None) -> tuple[RetrievalMethod, RetrievalDataModule]:
    """The run's method (from `ckpt`, default its last checkpoint) and DataModule, with clear errors."""
    if not run.is_dir() or not (run / "config.yaml").is_file():
        raise UserError(
            f"{run}: not a run folder (no config.yaml); expected runs/<dataset>/<method>/<profile>/"
            "seed<k>-<hash>/ written by `python -m fgbench fit`"
        )
    path = ckpt or run / CHECKPOINT
    if not path.is_file():
        others = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
        hint = f" (found: {', '.join(others)}; pass --ckpt)" if others else " (the run saved no checkpoint)"
        raise UserError(f"{path}: checkpoint missing{hint}")
    dm = load_datamodule(run)
    if data_root is not None:
        dm.root = data_root
    try:
        dm.setup("test")
    except (DatasetError, FileNotFoundError) as err:
        raise UserError(
            f"{run}: the run's dataset cannot be read (root {dm.root}): {err}; pass --data-root where its "
            "files are"
        ) from None
    return Ensemble.load_member(path, dm.info()).eval(), dm


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m experiments.show", description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run folder (config.yaml, checkpoints/last.ckpt)")
    ap.add_argument("--split", help="evaluation split (default: the run's test split)")
    ap.add_argument("--n", type=int, default=8, help="queries shown (default 8)")
    ap.add_argument("--k", type=int, default=5, help="gallery items per query (default 5)")
    pick = ap.add_mutually_exclusive_group()
    pick.add_argument("--worst", action="store_true", help="queries whose first relevant item ranks lowest")
    pick.add_argument("--random", action="store_true", help="a seeded random draw (the default)")
    pick.add_argument("--query", action="append", metavar="ID", help="a query id or row index (repeatable)")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    ap.add_argument(
        "--direction", choices=DIRECTIONS, help="t2i or i2t (default: i2t for image-text, else t2i)"
    )
    ap.add_argument("--ckpt", type=Path, help="checkpoint (default RUN/checkpoints/last.ckpt)")
    ap.add_argument("--data-root", type=Path, help="dataset root, when not the one in the run's config")
    ap.add_argument("--out", type=Path, help="output folder (default RUN/show/)")
    args = ap.parse_args(argv)
    if args.n < 1 or args.k < 1:
        ap.error("--n and --k must be at least 1")
    args.mode = "worst" if args.worst else "query" if args.query else "random"
    return args


@cli_entry()
def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    model, dm = load(args.run, args.ckpt, args.data_root)
    split = args.split or dm.test_split
    task = build_task(model, dm, split, args.direction)
    rows = rows_to_show(task, choose(task, args.mode, args.n, args.k, args.seed, args.query or []))
    title = (
        f"{type(model).name} on {dm.name} {split} ({task.protocol}, {task.direction}): {args.mode} queries"
    )
    meta = [
        f"run: {args.run}",
        "ranked by the evaluator: stable descending order, ties by gallery index, excluded items removed;"
        " relevant items framed green",
    ]
    record = args.run / RESULT_FILE
    if split == dm.test_split and args.ckpt is None and record.is_file():
        metrics = read_result(record).get("metrics") or {}
        meta.append(
            "the run's test metrics (result.json): " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())
        )
    out = args.out or args.run / "show"
    stem = out / f"{split}_{args.mode}"
    png = atomic_write_bytes(stem.with_suffix(".png"), render_png(rows, title, args.k))
    page = atomic_write_text(stem.with_suffix(".html"), render_html(rows, title, meta))
    print(png)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
