"""Name -> class registries for methods and datamodules (timm-style decorator registry), and plugin discovery.

The evaluator never imports a method or a dataset; the CLI and the experiments look them up here by name
(`resolve` takes a registry name or a class path). The core names no plugin package either: the modules that
register methods and datamodules are found through

- the `fgbench.plugins` entry-point group (pyproject.toml declares `methods`, `datamodules` and
  `fgbench.ensemble`; another installed package adds its own entry), and
- the `FGBENCH_PLUGINS` environment variable: entries separated by `os.pathsep`, each an importable module
  name or a folder whose `*.py` files and packages are imported (the folder goes on `sys.path`, so its
  classes resolve by class path, e.g. `my_method.MyMethod`); a folder's `configs/<kind>/<name>.yaml` serve
  `experiments.sweep` as `experiments/configs` does (docs/plugins.md).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "fgbench.plugins"
PLUGINS_ENV = "FGBENCH_PLUGINS"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"  # of a source checkout


class Registry(Generic[T]):
    """A mapping from a registry name to a class, filled by the `register` decorator.

    Registering sets the class's `name` to its registry name (the one name of a method or datamodule); a
    class that declares its own, different `name` is refused.
    """

    def __init__(self, kind: str, plugins: bool = True) -> None:
        self.kind = kind
        self.plugins = plugins  # load the plugins before a lookup
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@DATAMODULES.register("rstpreid")` above a class."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name]!r}")
            own = vars(obj).get("name") if isinstance(obj, type) else None
            if own and own != name:
                raise ValueError(
                    f"{self.kind} {name!r}: {obj.__qualname__} declares name = {own!r}; the registry sets "
                    f"the name, so drop that line or make it {name!r}"
                )
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self._known()}") from None

    def resolve(self, spec: str) -> T:
        """A registry name (`teran`) or a dotted class path (`methods.teran.TERAN`) -> the class.

        Raises KeyError naming the registered names when neither finds a class.
        """
        if "." not in spec:
            return self.get(spec)
        module, _, attr = spec.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            self._load()  # a class of a plugin folder is importable once the folder is on sys.path
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise KeyError(
                f"cannot import {self.kind} class {spec!r} ({err}); registered names: {self._known()}"
            ) from None

    def list(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def _known(self) -> str:
        return ", ".join(self.list()) or "none"

    def _load(self) -> None:
        if self.plugins:
            load_plugins()


METHODS: Registry[type] = Registry("method")
DATAMODULES: Registry[type] = Registry("datamodule")

_loaded = False


def resolve(spec: str, registry: Registry[Any] | None = None) -> type:
    """A class from a registry name or a dotted class path; names are looked up in `registry` (METHODS)."""
    cls = (registry or METHODS).resolve(spec)
    if not isinstance(cls, type):
        raise TypeError(f"{spec!r} is {cls!r}, not a class")
    return cls


def entry_points() -> list[Any]:
    """The `fgbench.plugins` entry points of the installed packages.

    From a source checkout whose installed metadata predates the group (an editable install not redone),
    the group is read from the checkout's pyproject.toml instead, so the default plugins still load.
    """
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return found or _pyproject_entry_points(PYPROJECT)


def _pyproject_entry_points(path: Path) -> list[Any]:
    if not path.is_file() or sys.version_info < (3, 11):
        return []
    import tomllib

    table = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {}).get("entry-points", {})
    return [
        importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP)
        for name, value in table.get(ENTRY_POINT_GROUP, {}).items()
    ]


def plugin_entries() -> list[str]:
    """The entries of `FGBENCH_PLUGINS` (module names or folders), in order."""
    return [e for e in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if e.strip()]


def plugin_folders() -> list[Path]:
    """The folders among the `FGBENCH_PLUGINS` entries."""
    return [Path(e) for e in plugin_entries() if Path(e).is_dir()]


def config_folders(base: Path, kind: str) -> list[Path]:
    """Where `<name>.yaml` configs live: `base/<kind>`, then each plugin folder's `configs/<kind>`."""
    return [base / kind, *(folder / "configs" / kind for folder in plugin_folders())]


def _folder_modules(folder: Path) -> Iterable[str]:
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()):
            yield path.stem


def _import_entry(entry: str) -> None:
    folder = Path(entry)
    if not folder.is_dir():
        importlib.import_module(entry)
        return
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    for module in _folder_modules(folder):
        importlib.import_module(module)


def load_plugins() -> None:
    """Import every plugin module (entry points, then `FGBENCH_PLUGINS`) so their decorators run (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points():
        ep.load()
    for entry in plugin_entries():
        _import_entry(entry)


def register_method(name: str) -> Callable[[T], T]:
    return METHODS.register(name)  # type: ignore[return-value]


def register_datamodule(name: str) -> Callable[[T], T]:
    return DATAMODULES.register(name)  # type: ignore[return-value]
