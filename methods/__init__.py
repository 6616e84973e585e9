"""Retrieval methods, each registered by name (see METHODS.md)."""
