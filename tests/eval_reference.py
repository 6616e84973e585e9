"""Brute-force docs/protocols.md definitions, written independently of the evaluator (plain Python sorting).

Each query's final order is `sorted(candidates, key=(-score, gallery index))`, optionally with the top-k
re-sorted by re-scores; every metric is read off that order exactly as the protocol text defines it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def order(s: np.ndarray, cand: list[int], re: np.ndarray | None = None, k: int | None = None) -> list[int]:
    o = sorted(cand, key=lambda j: (-float(s[j]), j))
    if re is not None and k is not None:
        top = sorted(o[:k], key=lambda j: (-float(re[j]), j))
        o = top + o[k:]
    return o


def ranks_of(o: list[int], items: list[int]) -> list[int]:
    pos = {g: i for i, g in enumerate(o)}
    return sorted(pos[g] for g in items)


def _cands(n: int, ex: int) -> list[int]:
    return [j for j in range(n) if j != ex]


def person(S, ql, gl, ex=None, R=None, k=None) -> dict[str, float]:
    out = {"R1": [], "R5": [], "R10": [], "mAP": [], "mINP": []}
    for q in range(S.shape[0]):
        e = -1 if ex is None else int(ex[q])
        o = order(S[q], _cands(S.shape[1], e), None if R is None else R[q], k)
        p = ranks_of(o, [g for g in o if gl[g] == ql[q]])
        for kk in (1, 5, 10):
            out[f"R{kk}"].append(p[0] < kk)
        out["mAP"].append(sum((i + 1) / (r + 1) for i, r in enumerate(p)) / len(p))
        out["mINP"].append(len(p) / (p[-1] + 1))
    return {key: 100.0 * float(np.mean(v)) for key, v in out.items()}


def class_reed(S, ql, gl) -> dict[str, float]:
    ap = []
    for c in range(S.shape[0]):
        o = order(S[c], list(range(S.shape[1])))
        ap.append(sum(gl[g] == ql[c] for g in o[:50]) / 50)
    top1 = []
    for i in range(S.shape[1]):
        best = order(S[:, i], list(range(S.shape[0])))[0]
        top1.append(ql[best] == gl[i])
    return {"AP50": 100.0 * float(np.mean(ap)), "top1": 100.0 * float(np.mean(top1))}


def itm(S, img, cap) -> dict[str, float]:
    """Rows images, columns captions."""
    r_i2t, r_t2i = [], []
    for i in range(S.shape[0]):
        o = order(S[i], list(range(S.shape[1])))
        r_i2t.append(min(ranks_of(o, [c for c in range(S.shape[1]) if cap[c] == img[i]])))
    for c in range(S.shape[1]):
        o = order(S[:, c], list(range(S.shape[0])))
        r_t2i.append(min(ranks_of(o, [i for i in range(S.shape[0]) if img[i] == cap[c]])))
    m = {}
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        for kk in (1, 5, 10):
            m[f"{name}_R{kk}"] = 100.0 * float(np.mean([x < kk for x in r]))
    m["rsum"] = sum(m[f"{d}_R{kk}"] for d in ("i2t", "t2i") for kk in (1, 5, 10))
    for name, r in (("i2t", r_i2t), ("t2i", r_t2i)):
        m[f"{name}_medr"] = math.floor(float(np.median(r))) + 1
        m[f"{name}_meanr"] = float(np.mean(r)) + 1
    return m


def coco_5fold(S, img, cap) -> dict[str, float]:
    size = S.shape[0] // 5
    folds = []
    for f in range(5):
        rows = list(range(f * size, (f + 1) * size))
        cols = [c for c in range(S.shape[1]) if cap[c] in set(img[rows].tolist())]
        folds.append(itm(S[np.ix_(rows, cols)], img[rows], cap[cols]))
    return {k: float(np.mean([fm[k] for fm in folds])) for k in folds[0]}


def recall_at(S, ql, gl, ks, ex=None) -> dict[str, float]:
    out = {kk: [] for kk in ks}
    for q in range(S.shape[0]):
        e = -1 if ex is None else int(ex[q])
        o = order(S[q], _cands(S.shape[1], e))
        for kk in ks:
            out[kk].append(any(gl[g] == ql[q] for g in o[:kk]))
    return {f"R{kk}": 100.0 * float(np.mean(v)) for kk, v in out.items()}


def cirr(S, ql, gl, ex, sub) -> dict[str, float]:
    m = recall_at(S, ql, gl, (1, 5, 10, 50), ex)
    rs = {1: [], 2: [], 3: []}
    for q in range(S.shape[0]):
        members = [int(g) for g in sub[q] if int(g) != int(ex[q])]
        o = order(S[q], members)
        target = [g for g in o if gl[g] == ql[q]][0]
        for kk in rs:
            rs[kk].append(o.index(target) < kk)
    for kk, v in rs.items():
        m[f"Rsub{kk}"] = 100.0 * float(np.mean(v))
    m["avg"] = (m["R5"] + m["Rsub1"]) / 2
    return m


def fashioniq_case(
    rng: np.random.Generator, cats: dict[str, tuple[int, int]], protocol: str
) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A random FashionIQ-style case: per category (n queries, m images, laid out one category after the
    other) each query's target among its category's images and, for fiq_b, a candidate image other than the
    target, excluded. Returns (the EvalSpec, category -> (query indices, image indices)); query ids are
    `<category>/c<i>>t<i>#0`."""
    import torch

    from fgbench.evaluation import EvalSpec

    nq, ng = sum(n for n, _ in cats.values()), sum(m for _, m in cats.values())
    targets, candidates = np.zeros(nq, dtype=np.int64), np.full(nq, -1, dtype=np.int64)
    parts, q0, g0 = {}, 0, 0
    for name, (n, m) in cats.items():
        qi, gi = np.arange(q0, q0 + n), np.arange(g0, g0 + m)
        targets[qi] = rng.choice(gi, size=n)
        if protocol == "fiq_b":
            candidates[qi] = [rng.choice([g for g in gi if g != t]) for t in targets[qi]]
        parts[name] = (qi, gi)
        q0, g0 = q0 + n, g0 + m
    spec = EvalSpec(
        protocol,
        torch.from_numpy(targets),
        torch.arange(ng),
        exclude=None if protocol == "fiq_a" else torch.from_numpy(candidates),
        groups={name: (torch.from_numpy(qi), torch.from_numpy(gi)) for name, (qi, gi) in parts.items()},
        query_ids=[f"{name}/c{i}>t{i}#0" for name, (n, _) in cats.items() for i in range(n)],
    )
    return spec, parts
