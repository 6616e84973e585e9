"""fgbench: one evaluator, shared DataModules and LightningModules for fine-grained cross-modal retrieval."""

from fgbench.registry import (
    DATAMODULES,
    METHODS,
    Registry,
    load_plugins,
    register_datamodule,
    register_method,
)

__version__ = "0.1.0"

__all__ = [
    "DATAMODULES",
    "METHODS",
    "Registry",
    "__version__",
    "load_plugins",
    "register_datamodule",
    "register_method",
]
