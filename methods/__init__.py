"""Retrieval methods, each registered by name (see METHODS.md)."""

from methods import clip4cir, clip_ft, clip_zs, irra, mmref, nsfse, tirg, vsepp  # noqa: F401
