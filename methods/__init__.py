"""Retrieval methods, each registered by name (see METHODS.md)."""

from methods import clip4cir, tirg, vsepp  # noqa: F401
