"""Dataset-family DataModules, each registered by name (see docs/data/)."""

from datamodules import cirr, fashion200k, fashioniq, itm, person, reed  # noqa: F401
from datamodules.synthetic import datamodules as synthetic_datamodules  # noqa: F401
