"""The embedded synthetic benchmark."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from datamodules.synthetic import cir, person, scenes
from datamodules.synthetic.common import atomic_folder, folder_name

GENERATORS: dict[str, ModuleType] = {m.NAME: m for m in (person, scenes, cir)}


def _generator(name: str) -> ModuleType:
    if name not in GENERATORS:
        raise KeyError(f"unknown synthetic dataset {name!r}; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def resolve_sizes(name: str, **sizes: int) -> dict[str, int]:
    """The generator's default sizes updated with `sizes`; unknown keys are an error naming the valid ones."""
    module = _generator(name)
    unknown = sorted(set(sizes) - set(module.DEFAULT_SIZES))
    if unknown:
        raise TypeError(f"{name}: unknown size option(s) {unknown}; valid: {sorted(module.DEFAULT_SIZES)}")
    return {**module.DEFAULT_SIZES, **sizes}


def output_path(name: str, root: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Where `generate` writes (or finds) a dataset: `<root>/<name>-v<version>-seed<seed>[-<sizes hash>]`."""
    module = _generator(name)
    full = resolve_sizes(name, **sizes)
    return Path(root) / folder_name(name, module.VERSION, seed, full, module.DEFAULT_SIZES)


def generate(name: str, root: str | Path, seed: int = 0, **sizes: int) -> Path:
    """Render synthetic dataset `name` under `root` unless a complete copy is there; return its folder.

    Example: `generate("synth-person", "data/synthetic", seed=0, train_ids=40)`. The folder appears only
    once every file is written (atomic rename), so an interrupted run is redone on the next call.
    """
    final = output_path(name, root, seed, **sizes)
    if final.is_dir():
        return final
    with atomic_folder(final) as tmp:
        _generator(name).write(tmp, seed, **resolve_sizes(name, **sizes))
    return final


__all__ = ["GENERATORS", "generate", "output_path", "resolve_sizes"]
