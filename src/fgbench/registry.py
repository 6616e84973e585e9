"""Name -> class registries for methods and datamodules (timm-style decorator registry).

The evaluator never imports a method or a dataset; the CLI and the experiments look them up here by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a registry name to a class, filled by the `register` decorator."""

    def __init__(self, kind: str, plugins: bool = True) -> None:
        self.kind = kind
        self.plugins = plugins  # import the method/datamodule packages before a lookup
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@DATAMODULES.register("rstpreid")` above a class."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name]!r}")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.list()) or "none"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def list(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def _load(self) -> None:
        if self.plugins:
            load_plugins()


METHODS: Registry[type] = Registry("method")
DATAMODULES: Registry[type] = Registry("datamodule")

_PLUGIN_PACKAGES = ("datamodules", "methods")
_loaded = False


def load_plugins() -> None:
    """Import the top-level `datamodules` and `methods` packages so their decorators run (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg in _PLUGIN_PACKAGES:
        try:
            importlib.import_module(pkg)
        except ModuleNotFoundError as err:  # only tolerate the package itself being absent
            if err.name != pkg:
                raise


def register_method(name: str) -> Callable[[T], T]:
    return METHODS.register(name)  # type: ignore[return-value]


def register_datamodule(name: str) -> Callable[[T], T]:
    return DATAMODULES.register(name)  # type: ignore[return-value]
