"""Stable query ids of an evaluation split (the keys of a run's per-query outcomes).

An id is built from what the official files say about a query (an image path and caption index, a CIRR pair
id, a COCO image id), so it is the same in every run on the same files. Entries a dataset keeps twice (a
repeated entry, a repeated image path: quirks its loader accepts) are numbered in file order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fgbench.data.validation import DatasetFormatError


def number_repeats(ids: Sequence[str], source: Path | str) -> list[str]:
    """`ids` with repeats numbered in order (the second "x" becomes "x~2", the third "x~3"), checked unique.

    `source` (the annotation file) names where they came from in the error, should numbering still leave a
    repeat (a file that also lists "x~2" itself)."""
    seen: Counter[str] = Counter()
    out = []
    for i in ids:
        seen[i] += 1
        out.append(i if seen[i] == 1 else f"{i}~{seen[i]}")
    counts = Counter(out)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise DatasetFormatError(
            source,
            f"{len(repeated)} query ids repeat after numbering repeats (e.g. {repeated[0]!r})",
            expected="one id per query (per-query outcomes)",
        )
    return out
