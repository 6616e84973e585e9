"""Profile presets: each method maps `profile: tiny | paper` to a flat dataclass of hyper-parameters.

Explicit overrides replace fields of the preset; an unknown field is an error naming the valid ones, so a
typo in a config never silently falls back to a default. Every method takes them two ways: the `overrides`
dict argument, which LightningCLI sees (`--model.init_args.overrides '{image_size: [128, 64]}'` or an
`overrides:` mapping in a YAML config), and keyword arguments from Python (`ClipFT(max_len=8)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

P = TypeVar("P")


def merge_overrides(overrides: Mapping[str, Any] | None, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """One field -> value mapping from the `overrides` dict and keyword arguments; a field given both ways
    with different values is an error, not a silent pick."""
    merged = dict(overrides or {})
    clash = sorted(k for k in keywords if k in merged and merged[k] != keywords[k])
    if clash:
        raise TypeError(f"profile field(s) {clash} given both in `overrides` and as keywords, differently")
    merged.update(keywords)
    return merged


def resolve_profile(
    presets: Mapping[str, P], profile: str, overrides: Mapping[str, Any], method: str = ""
) -> P:
    """The preset `profile` with `overrides` (field name -> value) applied."""
    who = f"{method}: " if method else ""
    if profile not in presets:
        raise ValueError(f"{who}profile {profile!r} is not one of {', '.join(presets)}")
    preset = presets[profile]
    known = {f.name for f in fields(preset)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{who}unknown profile override(s) {unknown}; valid: {sorted(known)}")
    values = dict(overrides)
    if values.get("image_size") is not None:  # YAML gives lists; presets hold (height, width) tuples
        values["image_size"] = tuple(values["image_size"])
    return replace(preset, **values)  # type: ignore[type-var]
