"""The throughput benchmarks' `--quick` modes run end to end (so they cannot rot), and the host-device sync
probe behind their `syncs/step` columns sees what it should.

Each quick run writes its CSV to a temp dir (never over the committed results) and must exit 0 with every
method / case / preset in its table.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_quick(script: str, tmp_path: Path, *extra: str) -> tuple[str, list[dict[str, str]]]:
    out_csv = tmp_path / f"{script}.csv"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--quick", "--out", str(out_csv), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # the machine is shared: a generous bound, the run itself takes seconds
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED" not in proc.stdout
    with open(out_csv, newline="") as f:
        return proc.stdout, list(csv.DictReader(f))


# methods whose training step was checked free of host-device syncs (nsfse: all but the BiGRU's lengths)
SYNC_FREE = ("clip_ft", "irra", "mmref", "teran", "nsfse")


def test_train_throughput_quick(tmp_path: Path) -> None:
    stdout, rows = run_quick("train_throughput", tmp_path)
    methods = {"clip_ft", "irra", "mmref", "teran", "nsfse", "racg"}
    assert {r["method"] for r in rows} == methods
    for r in rows:
        if r["status"] == "skipped":  # a method not (yet) registered: a row saying why, not a crash
            assert r["method"] == "racg" and r["note"].startswith("skipped:")
            continue
        assert r["status"] == "ok", r
        assert float(r["suite_seconds_per_step"]) > 0 and float(r["bare_seconds_per_step"]) > 0
        assert float(r["suite_per_bare"]) > 0 and float(r["flops_per_step"]) > 0
    eager = {r["method"]: r for r in rows if r["compile"] == "off" and r["status"] == "ok"}
    assert set(eager) >= methods - {"racg"}
    assert any(r["compile"] == "eager" and r["status"] == "ok" for r in rows)  # the compiled path runs
    for name in SYNC_FREE:
        # no host-device sync in a suite loop iteration (Lightning's hooks and logging included), except
        # pack_padded_sequence's host lengths (NSFSE's BiGRU, src/fgbench/encoders/rnn.py), known and reported
        sites = [s for s in eager[name]["sync_sites"].split(" | ") if s.startswith("suite:")]
        assert all("pack_padded_sequence" in s for s in sites), (name, sites)
        if not sites:
            assert eager[name]["syncs_per_step_suite"] == "0", (name, eager[name])
    assert "| clip_ft " in stdout and "MFU %" in stdout and "suite/bare" in stdout


def test_eval_throughput_quick(tmp_path: Path) -> None:
    stdout, rows = run_quick("eval_throughput", tmp_path)
    cases = {"person_global", "coco_global", "coco_teran_exact", "coco_teran_once", "coco_teran_rerank"}
    cases |= {"coco_teran_exact_padded", "coco_teran_exact_bf16", "coco_racg_exact", "coco_racg_exact_padded"}
    assert {r["case"] for r in rows} == cases
    by = {r["case"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows), rows
    # exact pairwise scoring walks the 100 x 500 matrix once for both directions (pairs as counted from the
    # score calls: all 50,000 plus the pre-pass of images against captions, well under two walks' 100,000);
    # the shortlist re-scores k per query in each direction
    pairs = int(by["coco_teran_exact"]["pairwise_pairs"].replace(",", ""))
    assert 50_000 < pairs < 60_000, pairs
    assert by["coco_teran_once"]["pairwise_pairs"] == "50,000"
    assert by["coco_teran_rerank"]["pairwise_pairs"] == f"{10 * (100 + 500):,}"
    # the two exact ways of scoring give the same metrics
    assert by["coco_teran_exact"]["mAP_/_rsum"] == by["coco_teran_once"]["mAP_/_rsum"]
    # grouped by length or padded: the same scores, so the same metrics (RACG likewise)
    assert by["coco_teran_exact"]["mAP_/_rsum"] == by["coco_teran_exact_padded"]["mAP_/_rsum"]
    assert by["coco_racg_exact"]["mAP_/_rsum"] == by["coco_racg_exact_padded"]["mAP_/_rsum"]
    for case in ("coco_teran_exact", "coco_teran_exact_padded", "coco_racg_exact"):  # rates were measured
        assert float(by[case]["useful_GFLOP/s"]) > 0 and float(by[case]["%_of_matmul"]) > 0
    assert "| coco_teran_exact " in stdout


def test_data_throughput_quick(tmp_path: Path) -> None:
    stdout, rows = run_quick("data_throughput", tmp_path)
    assert {r["preset"] for r in rows} == {"person_irra", "itm_clip", "vsepp", "nsfse"}
    assert all(r["status"] == "ok" and float(r["images/s"]) > 0 for r in rows), rows
    assert {r["workers"] for r in rows} == {"0", "1"}
    assert "workers (e.g." in stdout


# -- the sync probe ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_cls() -> type:
    sys.path.insert(0, str(BENCH))
    try:
        from _sync_probe import SyncProbe
    finally:
        sys.path.remove(str(BENCH))
    return SyncProbe


def test_sync_probe_sees_device_waits_and_ignores_host_counters(probe_cls: type) -> None:
    x = torch.randn(8, 4, requires_grad=True)
    probe = probe_cls()
    with probe:
        loss = x.sum()
        float(loss.detach())  # .item() of a result: waits for the device
        _ = x[x > 0]  # boolean-mask indexing: its nonzero waits for the device
        bool((x > 0).any())
    assert probe.count == 3, dict(probe.found)
    opt = torch.optim.Adam([x])
    x.sum().backward()
    quiet = probe_cls()
    with quiet:
        y = (x * 2).softmax(-1).sum()  # plain device work
        opt.step()  # Adam's step counter lives on the host: not a sync
    assert quiet.count == 0, dict(quiet.found)
    del y


def test_text_towers_never_wait_for_the_device(probe_cls: type, tmp_path: Path) -> None:
    """CLIP's and BERT's towers pass no 2-D padding mask to transformers, which would check it with
    `.all()` (a sync per call): forward and backward of both, on padded captions, find no sync."""
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModelWithProjection

    from fgbench.data.batches import Text
    from fgbench.encoders import build_text_encoder

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    clip_cfg = CLIPTextConfig(
        **tower, vocab_size=60, max_position_embeddings=16, bos_token_id=58, eos_token_id=59
    )
    CLIPTextModelWithProjection(clip_cfg).save_pretrained(tmp_path / "clip")
    BertModel(BertConfig(**tower, vocab_size=60), add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    ids = torch.randint(1, 58, (3, 10))
    mask = torch.arange(10)[None, :] < torch.tensor([[10], [6], [4]])
    ids[torch.arange(3), mask.sum(1) - 1] = 59  # EOT (the largest id) at the end of each caption
    text = Text(raw=["a"] * 3, input_ids=ids.masked_fill(~mask, 0), attention_mask=mask.long())
    for kind, extra in (("clip_text", {}), ("bert", {"num_layers": 1})):
        enc = build_text_encoder(kind, name_or_path=tmp_path / kind.split("_")[0], **extra)
        probe = probe_cls()
        with probe:
            enc(text).tokens.sum().backward()
        assert probe.count == 0, (kind, dict(probe.found))
