"""Real-scale speed of `python -m fgbench data check` and `DataModule.setup()`: annotation files of the real
datasets' sizes in their official formats, with placeholder images, timed per step.

Datasets (sizes as docs/data/ lists them): CUHK-PEDES (40,206 images, 80,412 captions, `reid_raw.json`),
COCO Karpathy (123,287 images, 616,435 captions, `dataset_coco.json`), FashionIQ (77,683 images, 30,134
triplets, `captions/` + `image_splits/`), Fashion200K (201,838 images, `labels/*_detect_all.txt` +
`test_queries.txt`). Every image is a hard link to one 8x8 JPEG (readers that parse image headers, such as
COCO's size cache, need a valid header; links cost one inode for all). Decoding real photos costs more per
image than the placeholder: `decode_ms` (one 640x480 JPEG, the verifier's 1/8-scale decode) tells how much.

Timed per dataset, each in a fresh process where it says so:
- `check`: the whole command in a subprocess (`python -m fgbench data check NAME --root R --json OUT`),
  interpreter start-up and imports included;
- `setup`: `setup()` without image verification (`verify_images=False`), in process;
- `verify_cold`: `setup()` with verification and an empty verdict cache (every image decoded once);
- `verify_warm`: the same again with the cache filled (what every later run pays).

    .venv/bin/python benchmarks/data_check_scale.py              # real sizes -> results/data_check_scale.csv
    .venv/bin/python benchmarks/data_check_scale.py --quick         # 5% sizes, CSV under the temp folder
    .venv/bin/python benchmarks/data_check_scale.py --only coco --profile   # cProfile of setup(), top lines
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import logging
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _bench import out_csv
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
WORDS = "a woman in a red coat with black boots walks next to the white wall carrying small blue bag".split()


def caption(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


class Placeholders:
    """Hard links to one tiny JPEG; creates the folders as needed."""

    MAX_LINKS = 60000  # ext4 allows 65,000 links per inode: a new source file after this many

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.n = tmp, 0
        self.dirs: set[Path] = set()

    def put(self, path: Path) -> None:
        if self.n % self.MAX_LINKS == 0:
            self.source = self.tmp / f"placeholder{self.n // self.MAX_LINKS}.jpg"
            Image.new("RGB", (8, 8), (120, 80, 40)).save(self.source, format="JPEG")
        self.n += 1
        if path.parent not in self.dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.dirs.add(path.parent)
        os.link(self.source, path)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def gen_cuhk(root: Path, ph: Placeholders, scale: float) -> None:
    """reid_raw.json: one entry per image (id, split, captions, file_path), two captions per image."""
    base = root / "CUHK-PEDES"
    entries, pid = [], 0
    for split, n_img, n_ids in (("train", 34054, 11003), ("val", 3078, 1000), ("test", 3074, 1000)):
        n_img, n_ids = max(4, int(n_img * scale)), max(2, int(n_ids * scale))
        for i in range(n_img):
            rel = f"{'train_query' if split == 'train' else 'test_query'}/p{pid + i % n_ids}_s{i}.jpg"
            entries.append(
                {
                    "split": split,
                    "captions": [caption(i), caption(i + 1)],
                    "file_path": rel,
                    "id": pid + i % n_ids,
                }
            )
            ph.put(base / "imgs" / rel)
        pid += n_ids
    write_json(base / "reid_raw.json", entries)


def gen_coco(root: Path, ph: Placeholders, scale: float) -> None:
    """dataset_coco.json (Karpathy): filepath, filename, imgid, split, sentences (5 each), cocoid."""
    base = root / "COCO"
    images, i = [], 0
    for split, n in (("train", 82783), ("restval", 30504), ("val", 5000), ("test", 5000)):
        for _ in range(max(4, int(n * scale))):
            folder = "train2014" if split == "train" else "val2014"
            name = f"COCO_{folder}_{i:012d}.jpg"
            sentences = [
                {
                    "tokens": caption(i + k).split(),
                    "raw": caption(i + k) + ".",
                    "imgid": i,
                    "sentid": 5 * i + k,
                }
                for k in range(5)
            ]
            images.append(
                {
                    "filepath": folder,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": name,
                    "imgid": i,
                    "split": split,
                    "sentences": sentences,
                    "cocoid": i + 1,
                }
            )
            ph.put(base / folder / name)
            i += 1
    write_json(base / "dataset_coco.json", {"images": images, "dataset": "coco"})


FIQ = {
    "dress": {"train": (5985, 11452), "val": (2017, 3817), "test": (2024, 3818)},
    "shirt": {"train": (5988, 19036), "val": (2038, 6346), "test": (2038, 6346)},
    "toptee": {"train": (6027, 16121), "val": (1961, 5373), "test": (2056, 5374)},
}


def gen_fashioniq(root: Path, ph: Placeholders, scale: float) -> None:
    """image_splits/split.CAT.SPLIT.json (ASINs), captions/cap.CAT.SPLIT.json (test without targets)."""
    base = root / "fashionIQ_dataset"
    for cat, splits in FIQ.items():
        for split, (n_trip, n_img) in splits.items():
            n_trip, n_img = max(2, int(n_trip * scale)), max(4, int(n_img * scale))
            asins = [f"B{cat[0].upper()}{split[:2].upper()}{i:07d}" for i in range(n_img)]
            caps = []
            for t in range(n_trip):
                entry: dict[str, object] = {
                    "candidate": asins[t % n_img],
                    "captions": [caption(t, 5), caption(t, 4)],
                }
                if split != "test":
                    entry["target"] = asins[(t + 1) % n_img]
                caps.append(entry)
            write_json(base / "image_splits" / f"split.{cat}.{split}.json", asins)
            write_json(base / "captions" / f"cap.{cat}.{split}.json", caps)
            for a in asins:
                ph.put(base / "images" / f"{a}.jpg")


F200K = {  # category -> (share of the images, folder)
    "dress": (0.3, "dresses"),
    "jacket": (0.15, "jackets"),
    "pants": (0.15, "pants"),
    "skirt": (0.1, "skirts"),
    "top": (0.3, "tops"),
}


def gen_fashion200k(root: Path, ph: Placeholders, scale: float) -> None:
    """labels/CAT_SPLIT_detect_all.txt (path, score, description; ~2 images per product), test_queries.txt."""
    base = root / "fashion200k"
    test_paths: list[tuple[str, str]] = []
    pid = 0
    colours = ["black", "blue", "red", "white", "green", "grey", "pink", "beige"]
    for split, total in (("train", 172049), ("test", 29789)):
        for cat, (share, folder) in F200K.items():
            lines = []
            for i in range(max(4, int(total * share * scale))):
                if i % 2 == 0:
                    pid += 1
                desc = f"{colours[pid % 8]} {WORDS[pid % len(WORDS)]} {WORDS[(pid // 8) % len(WORDS)]} {cat}"
                rel = f"women/{folder}/casual/{pid}/{pid}_{i % 2}.jpeg"
                lines.append(f"{rel}\t{0.5 + (i % 50) / 100:.4f}\t{desc}\n")
                ph.put(base / rel)
                if split == "test":
                    test_paths.append((rel, desc))
            (base / "labels").mkdir(parents=True, exist_ok=True)
            (base / "labels" / f"{cat}_{split}_detect_all.txt").write_text("".join(lines), encoding="utf-8")
    n_queries = max(2, int(33480 * scale))
    queries = [f"{test_paths[q % len(test_paths)][0]} {test_paths[(q * 7 + 3) % len(test_paths)][0]}\n"
               for q in range(n_queries)]  # fmt: skip
    (base / "test_queries.txt").write_text("".join(queries), encoding="utf-8")


GENERATORS: dict[str, Callable[[Path, Placeholders, float], None]] = {
    "cuhk-pedes": gen_cuhk,
    "coco": gen_coco,
    "fashioniq": gen_fashioniq,
    "fashion200k": gen_fashion200k,
}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def setup_once(name: str, root: Path, verify: bool) -> object:
    from fgbench.registry import DATAMODULES

    dm = DATAMODULES.get(name)(root=str(root), verify_images=verify)
    dm.setup()
    return dm.loaded


def decode_ms(tmp: Path) -> float:
    """Milliseconds the verifier spends on one 640x480 photo-like JPEG (median of 50)."""
    from fgbench.data.images import decode_error

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(128, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
    path = tmp / "photo.jpg"
    Image.fromarray(img).save(path, format="JPEG", quality=90)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        assert decode_error(path) is None
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def profile_setup(name: str, root: Path, verify: bool, lines: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    setup_once(name, root, verify)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(lines)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5%% of the real sizes; CSV in results/quick/")
    ap.add_argument(
        "--scale", type=float, default=None, help="fraction of the real sizes (default 1, quick 0.05)"
    )
    ap.add_argument("--only", default=",".join(GENERATORS), help="comma-separated datasets")
    ap.add_argument(
        "--out", default=None, help="CSV path (default results/data_check_scale.csv; --quick: results/quick/)"
    )
    ap.add_argument("--profile", action="store_true", help="print cProfile's top lines of each setup()")
    ap.add_argument("--workdir", default=None, help="where to write the datasets (default: a temp folder)")
    args = ap.parse_args()
    scale = args.scale if args.scale is not None else (0.05 if args.quick else 1.0)
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="fgbench-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    out = out_csv(Path(args.out) if args.out else None, args.quick, "data_check_scale")
    os.environ["FGBENCH_CACHE_DIR"] = str(tmp / "cache")  # a cold cache, not the user's
    logging.getLogger("fgbench.data").setLevel(logging.ERROR)  # the count warnings are expected here
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1"}
    ph = Placeholders(tmp)
    ms = decode_ms(tmp)
    # what `check_s` spends before reading anything: interpreter start-up and the plugin imports
    imp = [sys.executable, "-c", "from fgbench.registry import DATAMODULES; DATAMODULES.list()"]
    imports_s, _ = timed(lambda: subprocess.run(imp, env=env, check=True))
    from fgbench.registry import DATAMODULES

    DATAMODULES.list()  # imported here too, so setup() times hold no import
    rows = []
    for name in args.only.split(","):
        root = tmp / name
        gen_s, _ = timed(lambda: GENERATORS[name](root, ph, scale))  # noqa: B023
        cmd = [
            sys.executable,
            "-m",
            "fgbench",
            "data",
            "check",
            name,
            "--root",
            str(root),
            "--json",
            str(root / "c.json"),
        ]
        check_s, proc = timed(lambda: subprocess.run(cmd, env=env, capture_output=True, text=True))  # noqa: B023
        if proc.returncode != 0:  # type: ignore[attr-defined]
            msg = f"{name}: data check exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"  # type: ignore[attr-defined]
            raise SystemExit(msg)
        report = json.loads((root / "c.json").read_text())
        found = {k: sum(r["found"].get(k, 0) for row, r in report["rows"].items() if "/" not in row)
                 for k in ("images", "captions", "queries", "gallery")}  # fmt: skip
        setup_s, _ = timed(lambda: setup_once(name, root, False))  # noqa: B023
        cold_s, _ = timed(lambda: setup_once(name, root, True))  # noqa: B023
        warm_s, _ = timed(lambda: setup_once(name, root, True))  # noqa: B023
        row = {
            "dataset": name,
            "scale": scale,
            **found,
            "generate_s": round(gen_s, 1),
            "check_s": round(check_s, 2),
            "imports_s": round(imports_s, 2),
            "setup_s": round(setup_s, 2),
            "verify_cold_s": round(cold_s, 2),
            "verify_warm_s": round(warm_s, 2),
            "decode_ms_640x480": round(ms, 2),
            "cpus": os.cpu_count(),
            "load1": round(os.getloadavg()[0], 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.profile:
            print(profile_setup(name, root, False))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} (datasets under {tmp})")


if __name__ == "__main__":
    main()
