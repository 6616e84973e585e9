"""Retrieval methods, each registered by name (see docs/methods.md); loaded as the `methods` entry point of
the `fgbench.plugins` group (pyproject.toml)."""

from methods import clip4cir, clip_ft, clip_zs, irra, mmref, nsfse, racg, teran, tirg, vsepp  # noqa: F401
