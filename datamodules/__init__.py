"""Dataset-family DataModules, each registered by name (see DATASETS.md)."""
