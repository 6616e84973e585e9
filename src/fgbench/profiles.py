"""Profile presets: each method maps `profile: tiny | paper` to a dataclass of hyper-parameters.

Explicit overrides replace fields of the preset; an unknown field is an error naming the valid ones, so a
typo in a config never silently falls back to a default. Every method takes them two ways: the `overrides`
dict argument, which LightningCLI sees (`--model.init_args.overrides '{image: {size: [128, 64]}}'` or an
`overrides:` mapping in a YAML config), and keyword arguments from Python (`ClipFT(max_len=8)`).
"""

from __future__ import annotations

import collections.abc as cabc
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

from fgbench.errors import ConfigError

P = TypeVar("P")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value (as YAML gives it: lists for tuples) fits a dataclass field's type hint."""
    if hint is Any or isinstance(hint, TypeVar):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        if not args:
            return True
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
    if origin in (list, cabc.Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if origin in (dict, cabc.Mapping):
        return isinstance(value, Mapping)
    if isinstance(hint, type):
        if is_dataclass(hint):
            return isinstance(value, (hint, Mapping))
        return isinstance(value, hint)
    return True  # a hint this check does not model: left to the method


def _show(hint: Any) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else str(hint).replace("typing.", "")


def check_types(preset: Any, values: Mapping[str, Any], who: str = "", prefix: str = "") -> dict[str, Any]:
    """`values` checked against the preset dataclass's field types (lists become tuples for tuple fields).

    A wrong type is an error naming the field, the value and the expected type, before anything is built.
    """
    hints = typing.get_type_hints(type(preset))
    out = dict(values)
    for name, value in values.items():
        hint = hints.get(name, Any)
        if not _fits(value, hint):
            raise ConfigError(
                f"{who}profile override {prefix}{name}={value!r} ({type(value).__name__}): "
                f"expected {_show(hint)}"
            )
        if isinstance(value, list) and typing.get_origin(hint) in (tuple, typing.Union, types.UnionType):
            out[name] = tuple(value)
    return out


def merge_overrides(overrides: Mapping[str, Any] | None, keywords: Mapping[str, Any]) -> dict[str, Any]:
    """One field -> value mapping from the `overrides` dict and keyword arguments; a field given both ways
    with different values is an error, not a silent pick."""
    merged = dict(overrides or {})
    clash = sorted(k for k in keywords if k in merged and merged[k] != keywords[k])
    if clash:
        raise ConfigError(f"profile field(s) {clash} given both in `overrides` and as keywords, differently")
    merged.update(keywords)
    return merged


def resolve_profile(
    presets: Mapping[str, P], profile: str, overrides: Mapping[str, Any], method: str = ""
) -> P:
    """The preset `profile` with `overrides` (field name -> value) applied.

    A field holding a config dataclass (a tower, the optimiser) takes a mapping of its own fields, merged
    into the preset's value (`{optim: {lr: 1e-4}}` keeps the preset's other optimiser fields); the same
    checks apply at every level and an error names the dotted field (`optim.lr`).
    """
    who = f"{method}: " if method else ""
    if profile not in presets:
        raise ValueError(f"{who}profile {profile!r} is not one of {', '.join(presets)}")
    return apply_overrides(presets[profile], overrides, who)


def apply_overrides(preset: P, overrides: Mapping[str, Any], who: str = "", prefix: str = "") -> P:
    """`preset` (a dataclass) with `overrides` applied, nested config dataclasses merged field by field."""
    known = {f.name for f in fields(preset)}  # type: ignore[arg-type]
    unknown = sorted(prefix + k for k in set(overrides) - known)
    if unknown:
        valid = sorted(prefix + k for k in known)
        raise ConfigError(f"{who}unknown profile override(s) {unknown}; valid: {valid}")
    values = dict(overrides)
    for name, value in overrides.items():
        current = getattr(preset, name)
        if is_dataclass(current) and isinstance(value, Mapping):
            values[name] = apply_overrides(current, value, who, f"{prefix}{name}.")
    values = check_types(preset, values, who, prefix)  # YAML lists become the presets' tuples
    return replace(preset, **values)  # type: ignore[type-var]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """One clear error when a string option is not one of its choices."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(choices)}")
