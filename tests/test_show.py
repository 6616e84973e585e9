"""experiments.show: on a tiny run of every task family (person and class-level text-to-image, image-text
both ways, composed), the PNG and the HTML hold the chosen queries with their top-k items, in the order and
with the relevance a brute-force ranking of the method's own score matrix gives (stable descending order,
ties by gallery index, the excluded reference removed); ranking ties and exclusions against a known matrix;
one clear error for a folder that is not a run, a missing checkpoint, an unknown query, missing data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from experiments import show
from fgbench.cli import main as fgbench_main
from fgbench.evaluation import MatrixSource, get_protocol
from fgbench.registry import DATAMODULES

from fixtures.composed import write_fashion200k, write_fashioniq
from fixtures.reed import write_cub

CONFIG = Path(__file__).parents[1] / "experiments" / "configs"
SIZES: dict[str, dict[str, int]] = {
    "synth-person": {"train_ids": 4, "val_ids": 2, "test_ids": 3, "images_per_id": 2},
    "synth-scenes": {"train_images": 6, "val_images": 3, "test_images": 4},
    "synth-cir": {"train_sets": 2, "val_sets": 2, "test1_sets": 1, "queries_per_set": 2},
}
FAMILIES = ["synth-person", "synth-scenes", "synth-cir", "cub", "fashioniq", "fashion200k"]
# CLI options of a tiny fit (FashionIQ under fiq_b: categories ranked apart, candidate excluded)
DATA_ARGS: dict[str, list[str]] = {
    "synth-cir": ["--data.test_split", "val"],
    "fashioniq": ["--data.test_split", "val", "--data.protocol", "fiq_b", "--data.batch_size", "3"],
    "fashion200k": ["--data.batch_size", "2", "--data.val_split", "test"],
}
SPLIT = {"synth-cir": "val", "fashioniq": "val"}


def _class_path(name: str) -> str:
    cls = DATAMODULES.get(name)
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 2-step clip_ft run (tiny profile) per task family, through `fgbench fit`."""
    base = tmp_path_factory.mktemp("show")
    data = base / "data"
    write_cub(data, images_per_class=3)
    write_fashioniq(data)
    write_fashion200k(data)
    out = {}
    for name in FAMILIES:
        extra = (["--data.sizes", json.dumps(SIZES[name])] if name in SIZES else []) + DATA_ARGS.get(name, [])
        args = [
            "fit",
            "--config", str(CONFIG / "method" / "clip_ft.yaml"),
            "--config", str(CONFIG / "profile" / "tiny.yaml"),
            "--data", _class_path(name),
            "--data.root", str(data),
            "--data.batch_size", "4",
            *extra,  # a later --data.batch_size wins
            "--trainer.max_steps", "2",
            "--trainer.max_epochs", "1",
            "--trainer.enable_progress_bar", "false",
            "--run.root", str(base / "runs"),
        ]  # fmt: skip
        assert fgbench_main(args) == 0
        (result,) = (base / "runs" / name / "clip_ft" / "tiny").glob("seed*/result.json")
        out[name] = result.parent
    return out


class Page(HTMLParser):
    """The rows of a show page: query id, index, first rank, and per item (index, rank, score, relevant)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "row":
            first = a["data-first"]
            self.rows.append(
                {"id": a["data-query"], "index": int(a["data-index"] or 0), "first": first, "items": []}
            )
        elif tag == "td" and "item" in (a.get("class") or "").split():
            self.rows[-1]["items"].append(
                (
                    int(a["data-index"] or 0),
                    int(a["data-rank"] or 0),
                    float(a["data-score"] or "nan"),
                    "relevant" in (a.get("class") or "").split(),
                )
            )

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def read_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


@dataclass
class Truth:
    """The method's full score matrix for the shown direction, with what a brute-force ranking needs."""

    scores: torch.Tensor
    rows: torch.Tensor  # query labels
    cols: torch.Tensor  # gallery labels
    exclude: torch.Tensor | None
    gallery_of: dict[int, set[int]]  # query -> the gallery it is ranked in (FashionIQ categories)

    def order(self, row: int) -> list[int]:
        """Gallery indices by descending score, ties by index, the excluded item removed (plain Python)."""
        cand = self.gallery_of.get(row, range(self.scores.shape[1]))
        cand = [j for j in cand if self.exclude is None or j != int(self.exclude[row])]
        return sorted(cand, key=lambda j: (-float(self.scores[row, j]), j))

    def first(self, row: int) -> int:
        return next(p for p, j in enumerate(self.order(row)) if self.cols[j] == self.rows[row]) + 1


def brute_force(run: Path, direction: str | None) -> Truth:
    model, dm = show.load(run, None, None)
    with torch.no_grad():
        q, g, spec = model.encode_split(dm, dm.test_split)
        ql = spec.query_labels
        if get_protocol(spec.protocol).pooled_queries:
            q, ql = model.pool_queries(q, spec.query_labels)
        s = model.score(q, g)  # loader queries x loader gallery
    if get_protocol(spec.protocol).rows_are_images:
        text_labels, image_labels = spec.gallery_labels, spec.query_labels
    else:
        text_labels, image_labels = ql, spec.gallery_labels
    direction = direction or ("i2t" if get_protocol(spec.protocol).rows_are_images else "t2i")
    if direction == "i2t":
        return Truth(s.T, image_labels, text_labels, None, {})
    exclude = None if get_protocol(spec.protocol).rows_are_images else spec.exclude
    gallery_of = {int(i): set(gi.tolist()) for qi, gi in (spec.groups or {}).values() for i in qi}
    return Truth(s, text_labels, image_labels, exclude, gallery_of)


def dm_spec(run: Path) -> Any:
    dm = show.load(run, None, None)[1]
    return dm.evaluation_set(dm.test_split).spec


def check_page(page: Page, truth: Truth, k: int) -> None:
    assert page.rows
    for row in page.rows:
        i = row["index"]
        order = truth.order(i)
        rel = [bool(truth.cols[j] == truth.rows[i]) for j in order]
        assert [it[0] for it in row["items"]] == order[:k]
        assert [it[1] for it in row["items"]] == list(range(1, min(k, len(order)) + 1))
        assert [it[3] for it in row["items"]] == rel[:k]
        assert row["first"] == str(rel.index(True) + 1)
        for j, _, score, _ in row["items"]:
            assert score == pytest.approx(float(truth.scores[i, j]), rel=1e-4, abs=1e-5)


def run_show(run: Path, out: Path, *args: str) -> tuple[Path, Path]:
    assert show.main([str(run), "--out", str(out), *args]) == 0
    pngs, pages = sorted(out.glob("*.png")), sorted(out.glob("*.html"))
    assert len(pngs) == len(pages) == 1 and pngs[0].stem == pages[0].stem
    with Image.open(pngs[0]) as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 100
    return pngs[0], pages[0]


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("synth-person", None),
        ("synth-scenes", None),
        ("synth-scenes", "t2i"),
        ("synth-cir", None),
        ("cub", None),
        ("fashioniq", None),
        ("fashion200k", None),
    ],
)
def test_worst_queries_match_a_brute_force_ranking(
    runs: dict[str, Path], tmp_path: Path, name: str, direction: str | None
) -> None:
    k, n = 3, 4
    extra = ["--direction", direction] if direction else []
    png, page_path = run_show(runs[name], tmp_path, "--worst", "--n", str(n), "--k", str(k), *extra)
    assert png.name == f"{SPLIT.get(name, 'test')}_worst.png"
    truth = brute_force(runs[name], direction)
    page = read_page(page_path)
    assert len(page.rows) == min(n, truth.scores.shape[0])
    check_page(page, truth, k)
    # the worst: no query left out ranks its first relevant item lower than the shown ones
    firsts = sorted((truth.first(i) for i in range(truth.scores.shape[0])), reverse=True)
    assert [int(r["first"]) for r in page.rows] == firsts[: len(page.rows)]
    if name == "fashioniq":  # each query names the category it was ranked in
        groups = {int(i): g for g, (qi, _) in dm_spec(runs[name]).groups.items() for i in qi}
        assert all(f"query {r['id']} ({groups[r['index']]})" in page.text for r in page.rows)
    assert page_path.read_text().count("data:image/jpeg;base64,") >= len(page.rows)
    assert "<script" not in page_path.read_text()
    r1 = json.loads((runs[name] / "result.json").read_text())["metrics"]
    assert f"{next(iter(r1))} {next(iter(r1.values())):.2f}" in "".join(page.text)  # the run's metrics


def test_query_texts_are_on_the_page_escaped(runs: dict[str, Path], tmp_path: Path) -> None:
    dm = show.load(runs["synth-person"], None, None)[1]
    captions = dm.evaluation_set("test").queries.captions
    ids = dm_spec(runs["synth-person"]).query_ids  # stable caption ids (<image path>#<caption index>)
    assert ids is not None and len(ids) == len(captions)
    _, page_path = run_show(runs["synth-person"], tmp_path, "--query", "0", "--query", ids[5], "--k", "2")
    page = read_page(page_path)
    assert [r["id"] for r in page.rows] == [ids[0], ids[5]]  # a row index or a stable id; shown by id
    text = "".join(page.text)
    assert captions[0] in text and captions[5] in text


def test_composed_query_by_its_pair_id_shows_reference_and_text(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    dm = show.load(runs["synth-cir"], None, None)[1]
    es = dm.evaluation_set("val")
    pid, row = es.spec.query_ids[3], 3
    _, page_path = run_show(runs["synth-cir"], tmp_path, "--query", pid, "--k", "4")
    page = read_page(page_path)
    assert [(r["id"], r["index"]) for r in page.rows] == [(pid, row)]
    assert es.queries.texts[row] in "".join(page.text)
    reference = int(es.spec.exclude[row])
    assert reference not in [it[0] for it in page.rows[0]["items"]]
    assert len(page.rows[0]["items"]) == 4


def test_random_draw_is_seeded(runs: dict[str, Path], tmp_path: Path) -> None:
    _, a = run_show(runs["synth-scenes"], tmp_path / "a", "--n", "3", "--k", "2", "--seed", "7")
    _, b = run_show(runs["synth-scenes"], tmp_path / "b", "--n", "3", "--k", "2", "--seed", "7")
    assert a.name == "test_random.html"
    assert [r["index"] for r in read_page(a).rows] == [r["index"] for r in read_page(b).rows]
    assert len(read_page(a).rows) == 3


def test_rank_breaks_ties_by_index_and_honours_exclusions_and_groups() -> None:
    scores = torch.tensor(
        [
            [0.5, 0.9, 0.5, 0.9, 0.1, 0.5],
            [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
            [0.3, 0.1, 0.8, 0.7, 0.9, 0.0],
        ]
    )
    item = lambda i: show.Item(text=str(i))  # noqa: E731
    rows = show.Side(3, item, torch.tensor([2, 0, 4]))
    cols = show.Side(6, item, torch.tensor([0, 1, 2, 3, 4, 5]))
    task = show.Task("test", "t2i", MatrixSource(scores), rows, cols, exclude=torch.tensor([1, -1, 2]))
    r = show.rank(task, torch.arange(3), 4)
    assert r.topk.tolist() == [[3, 0, 2, 5], [0, 1, 2, 3], [4, 3, 0, 1]]  # ties by index, 1 and 2 excluded
    assert r.first.tolist() == [2, 0, 0]
    assert r.relevant.tolist() == [
        [False, False, True, False],
        [True, False, False, False],
        [True] + [False] * 3,
    ]
    assert r.scores[0].tolist() == pytest.approx([0.9, 0.5, 0.5, 0.5])
    groups = {
        "a": (torch.tensor([0, 2]), torch.tensor([2, 3, 4])),
        "b": (torch.tensor([1]), torch.tensor([0, 1])),
    }
    grouped = show.Task("test", "t2i", MatrixSource(scores), rows, cols, groups=groups)
    g = show.rank(grouped, torch.arange(3), 3)
    assert g.topk.tolist() == [[3, 2, 4], [0, 1, -1], [4, 2, 3]]
    assert g.relevant[0].tolist() == [False, True, False] and g.first.tolist() == [1, 0, 0]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], one_line: bool = True) -> str:
    assert show.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1 or not one_line
    return err


def test_a_folder_that_is_not_a_run_is_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a run folder (no config.yaml)" in _error(capsys, [str(tmp_path)])
    assert "not a run folder" in _error(capsys, [str(tmp_path / "absent")])


def test_a_missing_checkpoint_is_one_error(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(capsys, [str(runs["synth-person"]), "--ckpt", str(tmp_path / "nope.ckpt")])
    assert "nope.ckpt: checkpoint missing" in err and "last.ckpt" in err  # names the run's checkpoints


def test_an_unknown_query_id_is_one_error(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(capsys, [str(runs["synth-cir"]), "--query", "no-such-pair", "--out", str(tmp_path)])
    assert "--query no-such-pair: unknown query" in err and "a query id of this split" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_missing_dataset_files_are_one_error(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(capsys, [str(runs["cub"]), "--data-root", str(tmp_path / "empty")], one_line=False)
    assert "the run's dataset cannot be read" in err and "--data-root" in err  # then the expected layout
    assert "CUB_200_2011/images" in err


def test_composed_retrieval_has_no_i2t(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert "only direction is t2i" in _error(capsys, [str(runs["synth-cir"]), "--direction", "i2t"])


def test_a_rerank_shortlist_is_shown_in_its_rescored_order_with_its_rescores() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    source = MatrixSource(scores, pair_fn=lambda r, c: c.float())  # re-score = gallery index
    item = lambda i: show.Item(text=str(i))  # noqa: E731
    rows = show.Side(2, item, torch.tensor([0, 0]))
    cols = show.Side(4, item, torch.tensor([0, 1, 2, 3]))
    r = show.rank(show.Task("test", "t2i", source, rows, cols, rerank_k=2), torch.arange(2), 4)
    # coarse shortlist {0, 1} re-ordered by re-score (1 before 0), then the coarse order
    assert r.topk.tolist() == [[1, 0, 2, 3], [3, 2, 1, 0]]
    assert r.scores[0].tolist() == pytest.approx([1.0, 0.0, 0.7, 0.1])
    assert r.scores[1].tolist() == pytest.approx([3.0, 2.0, 0.2, 0.1])
    assert r.first.tolist() == [1, 3] and r.relevant[0].tolist() == [False, True, False, False]


def test_coco_folds_pair_each_thousand_images_with_their_captions() -> None:
    images = torch.arange(10)  # 5 folds of 2 images; captions 2 per image, listed out of image order
    captions = torch.tensor([9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    t2i = show.fold_groups(images, captions, "t2i")
    assert list(t2i) == [f"fold {f}" for f in range(1, 6)]
    caps, imgs = t2i["fold 1"]
    assert imgs.tolist() == [0, 1] and caps.tolist() == [1, 2, 10, 11]
    imgs, caps = show.fold_groups(images, captions, "i2t")["fold 5"]
    assert imgs.tolist() == [8, 9] and caps.tolist() == [0, 9, 18, 19]
