"""What names a run: the values of its resolved config that change results and differ from the defaults.

The run directory is `seed<k>-<hash of the identity>`. Two rules keep finished cells where they are:

- keys that only say where or how a run is logged or launched (`_UNHASHED`) and the subcommand's own
  arguments (`ckpt_path`, `verbose`, ...) are left out;
- a value equal to its default is left out, so adding an option with a default re-hashes nothing.
  Defaults come from the parser (trainer and top-level options) and from the `__init__` signatures of the
  model and data classes (the classes' own defaults, whatever the option was spelt in).

Run directories named by the first scheme (the whole resolved config minus a shorter list of keys) are still
found: `legacy_hash` computes that name, and the caller uses whichever folder exists.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import PurePath
from typing import Any

from fgbench.registry import resolve
from fgbench.results import config_hash

# where or how a run is logged or launched, not what it computes
_UNHASHED = (
    "data.init_args.root",
    "data.init_args.num_workers",
    "data.init_args.pin_memory",
    "data.init_args.persistent_workers",
    "data.init_args.eval_batch_size",
    "model.init_args.eval_block_rows",
    "model.init_args.eval_col_block",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "trainer.log_every_n_steps",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "run",
    "config",
    "ckpt_path",
    "verbose",
    "weights_only",
)

# the first scheme's list (run directories written before the identity existed)
_LEGACY_UNHASHED = (
    "data.init_args.root",
    "data.init_args.num_workers",
    "data.init_args.pin_memory",
    "data.init_args.persistent_workers",
    "data.init_args.eval_batch_size",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "run",
    "ckpt_path",
    "config",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
)
# DataModule options added after the first scheme (at their defaults they never change a result): an old
# folder's hash was computed without them
_LEGACY_UNHASHED += ("data.init_args.strict", "data.init_args.verify_images")
_TEST_ONLY = ("verbose",)  # arguments of `test`/`validate` that a `fit` config never held
_CLASS_SECTIONS = ("model", "data")
_ALWAYS = ("seed_everything",)  # identity even at its default (the folder name repeats it)


def plain(value: Any) -> Any:
    """A value as JSON-able data (dataclasses, tuples, paths and enums as a config file would spell them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    return value


def same(a: Any, b: Any) -> bool:
    """Equal as config values (1 == 1.0, a tuple == a list, a dataclass == its fields)."""
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True, default=str)


def _signature_defaults(class_path: str) -> dict[str, Any]:
    """Defaults of a class's `__init__` parameters, subclass first (parents fill what `**kwargs` passes)."""
    try:
        cls = resolve(class_path)
    except (KeyError, TypeError, ValueError):
        return {}
    return _class_defaults(cls)


@lru_cache(maxsize=64)
def _class_defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.default is not inspect.Parameter.empty and p.name not in out:
                out[p.name] = p.default
    return out


def _drop(cfg: dict[str, Any], dotted: str) -> None:
    *path, last = dotted.split(".")
    node: Any = cfg
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def _without(config: Mapping[str, Any], keys: Iterable[str], convert: bool = True) -> dict[str, Any]:
    """A deep copy in JSON data less `keys` (convert=False: objects as `str`, exactly as the first scheme)."""
    out = json.loads(json.dumps(plain(config) if convert else config, default=str))
    for key in keys:
        _drop(out, key)
    return out


def _non_default(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not (k in defaults and same(v, defaults[k]))}


def identity(config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The part of a resolved config (`namespace.as_dict()` or a saved config.yaml) that names a run.

    `defaults` is the parser's defaults in the same shape (`parser.get_defaults().as_dict()`); without it
    only the model and data classes' own defaults are dropped.
    """
    cfg = _without(config, _UNHASHED)
    defaults = _without(defaults or {}, _UNHASHED)
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in _CLASS_SECTIONS and isinstance(value, dict) and value.get("class_path"):
            args = _non_default(value.get("init_args") or {}, _signature_defaults(value["class_path"]))
            section: dict[str, Any] = {"class_path": value["class_path"]}
            if args:
                section["init_args"] = args
            if value.get("dict_kwargs"):
                section["dict_kwargs"] = value["dict_kwargs"]
            out[key] = section
        elif isinstance(value, dict) and isinstance(defaults.get(key), dict):
            section = _non_default(value, defaults[key])
            if section:
                out[key] = section
        elif key in _ALWAYS or key not in defaults or not same(value, defaults[key]):
            out[key] = value
    return out


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (value in a, value in b)} for every leaf where two identities differ (None = absent)."""
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        sections = isinstance(va, Mapping | None) and isinstance(vb, Mapping | None)
        if sections and (va is not None or vb is not None):  # a section absent on one side: all defaults
            out.update(differences(va or {}, vb or {}, name + "."))
        elif not same(va, vb):
            out[name] = (va, vb)
    return out


def identity_hash(config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    return config_hash(identity(config, defaults))


def legacy_hash(config: Mapping[str, Any]) -> str:
    """The first scheme's hash: the whole resolved config of the `fit`, less a fixed list of keys."""
    return config_hash(_without(config, (*_LEGACY_UNHASHED, *_TEST_ONLY), convert=False))


def group_hash(ident: Mapping[str, Any]) -> str:
    """The same config over seeds (leaderboards aggregate by it)."""
    return config_hash({k: v for k, v in ident.items() if k != "seed_everything"})
