"""Speed options of a run that change no result: channels_last memory format and `torch.compile`.

Both act on the built model (methods build their towers in `setup`, once the DataModule is known), so they
live in a callback that runs at the start of fit, validate and test rather than before the Trainer is made.
- `channels_last`: 4-D weights (convolutions) stored NHWC, which tensor-core convolutions prefer under bf16
  on a GPU; "auto" turns it on only on CUDA and only for a model that has a convolution. On a CPU it helps
  little and is left off.
- `compile`: every top-level submodule (the towers and heads) is compiled in place with `nn.Module.compile`,
  so parameter names, checkpoints and the evaluator see the same model. The backend is the option's value
  ("inductor" for speed; "eager" only checks that the graphs trace).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

CHANNELS_LAST = ("auto", "on", "off")
COMPILE = ("off", "inductor", "eager", "aot_eager")


def wants_channels_last(setting: str, module: nn.Module, device: torch.device) -> bool:
    """Whether `setting` (auto/on/off) asks for channels_last for `module` on `device`."""
    if setting not in CHANNELS_LAST:
        raise ValueError(f"run.channels_last={setting!r}: expected one of {', '.join(CHANNELS_LAST)}")
    if setting != "auto":
        return setting == "on"
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in module.modules())


class SpeedOptions(Callback):
    """Applies `channels_last` and `compile` to the built model, once, whichever stage starts first."""

    def __init__(self, channels_last: str = "auto", compile: str = "off") -> None:
        if compile not in COMPILE:
            raise ValueError(f"run.compile={compile!r}: expected one of {', '.join(COMPILE)}")
        wants_channels_last(channels_last, nn.Module(), torch.device("cpu"))  # validates the value
        self.channels_last, self.compile = channels_last, compile
        self.applied: dict[str, bool] = {}

    def _apply(self, pl_module: L.LightningModule) -> None:
        if self.applied:
            return
        cl = wants_channels_last(self.channels_last, pl_module, pl_module.device)
        if cl:
            pl_module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        compiled = []
        if self.compile != "off":
            for name, child in pl_module.named_children():
                if any(True for _ in child.parameters()):  # towers and heads, not parameter-free helpers
                    child.compile(backend=self.compile)
                    compiled.append(name)
        self.applied = {"channels_last": cl, "compiled": bool(compiled)}
        pl_module.speed_options = {"channels_last": cl, "compile": self.compile, "compiled_modules": compiled}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing to resume: the options are re-applied to the restored model
