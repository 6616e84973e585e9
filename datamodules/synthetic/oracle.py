"""The attribute oracle of synth-person: how far the captions alone can go (docs/synthetic.md, Calibration).

`parse_person` reads a caption back into the attribute facts it states, with the vocabulary the generator
writes from (an adjective belongs to the next noun and must fit that noun's group). The oracle ranks, for each
test caption, the test images whose rendered attributes fit every stated fact first (in random order among
themselves) and everything else after: its expected R@1 is the ceiling set by the captions' ambiguity, the
number a perfect reader of images and words would reach on average, far above what tiny models reach.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from statistics import mean

from datamodules.synthetic import person
from datamodules.synthetic.common import RECORD_FILE


def words_re(words: list[str]) -> str:
    """Alternation of whole words or phrases (hyphens count as word characters), longest first."""
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return rf"(?<![\w-])(?:{alternatives})(?![\w-])"


_NOUNS = {w: (g, t) for g, types in person.NOUNS.items() for t, words in types.items() for w in words}
_NOUN_RE = re.compile(f"({words_re(list(_NOUNS))})")
_ABSENT = {p: g for g, phrases in person.ABSENT.items() for p in phrases}
_ABSENT_RE = re.compile(f"({words_re(list(_ABSENT))})")


def vocabulary_words(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """The words of `text` that are adjectives of the vocabulary, each with its (field, value) readings."""
    found = []
    for word in re.findall(r"[\w-]+", text):
        readings = [
            (f, v) for f, values in person.ADJECTIVES.items() for v, ws in values.items() if word in ws
        ]
        if readings:
            found.append((word, readings))
    return found


def parse_person(caption: str) -> dict[str, str]:
    """Attribute facts (field -> value) a synth-person caption states; ValueError for a misplaced word."""
    text = caption.lower()
    facts = {f"{_ABSENT[m]}_type": "none" for m in _ABSENT_RE.findall(text)}
    text = _ABSENT_RE.sub("|", text)
    start = 0
    for m in _NOUN_RE.finditer(text):
        group, type_value = _NOUNS[m.group(1)]
        if type_value:
            facts[f"{group}_type"] = type_value
        for word, readings in vocabulary_words(text[start : m.start()]):
            mine = [(f, v) for f, v in readings if f in person.GROUPS[group]]
            if len(mine) != 1:
                raise ValueError(f"{word!r} cannot describe {m.group(1)!r} in {caption!r}")
            facts[mine[0][0]] = mine[0][1]
        start = m.end()
    if vocabulary_words(text[start:]):
        raise ValueError(f"adjective after the last noun in {caption!r}")
    return facts


def person_oracle(folder: Path, split: str = "test") -> dict[str, float]:
    """Expected R@1 (%) of the attribute oracle on `split`, and the mean number of identities fitting a
    caption."""
    entries = json.loads((folder / "data_captions.json").read_text(encoding="utf-8"))
    record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))["images"]
    gallery = [(e["id"], record[e["img_path"]]["attributes"]) for e in entries if e["split"] == split]
    if not gallery:
        raise ValueError(f"{folder / 'data_captions.json'}: no images with split {split!r}")
    per_id = len(gallery) / len({pid for pid, _ in gallery})
    hit, fitting = [], []
    for e in entries:
        if e["split"] != split:
            continue
        for caption in e["captions"]:
            facts = parse_person(caption)
            fit = [pid for pid, attrs in gallery if all(attrs[f] == v for f, v in facts.items())]
            hit.append(sum(pid == e["id"] for pid in fit) / len(fit))  # its own images always fit
            fitting.append(len(fit) / per_id)
    return {"R1": 100 * mean(hit), "identities_per_caption": mean(fitting), "captions": len(hit)}
