"""Retrieval methods, each registered by name (see docs/methods.md)."""

import fgbench.ensemble  # noqa: F401  (registers "ensemble": the mean score of trained runs)
from methods import clip4cir, clip_ft, clip_zs, irra, mmref, nsfse, racg, teran, tirg, vsepp  # noqa: F401
