"""`mhc.utils.lightning_callback`: `MHCLightningCallback` for PyTorch Lightning.

The class subclasses Lightning's ``Callback``, so it is built on first use: importing this module
never needs Lightning, and ``MHCLightningCallback`` raises an ``ImportError`` naming the package
to install when neither ``lightning`` nor ``pytorch_lightning`` is there.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import layers
from .visualization import extract_mixing_weights

INSTALL = "pip install lightning"


def _callback_base() -> type:
    try:
        from lightning.pytorch.callbacks import Callback
    except ImportError:
        try:
            from pytorch_lightning.callbacks import Callback
        except ImportError as exc:
            raise ImportError(
                f"MHCLightningCallback needs PyTorch Lightning (lightning or pytorch_lightning): {INSTALL}"
            ) from exc
    return Callback


class _CallbackLogic:
    """The hooks of `MHCLightningCallback`, apart from Lightning's base class."""

    def __init__(self, log_mixing_weights: bool = True, log_interval: int = 50, prefix: str = "mhc") -> None:
        if isinstance(log_interval, bool) or not isinstance(log_interval, int) or log_interval < 1:
            raise ValueError(f"log_interval must be an int >= 1, got {log_interval!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {prefix!r}")
        super().__init__()
        self.log_mixing_weights = bool(log_mixing_weights)
        self.log_interval = log_interval
        self.prefix = prefix

    @staticmethod
    def _clear_all_history(model: nn.Module) -> None:
        # Kept for the package's code paths; history never outlives a call here, so this is cheap.
        for module in model.modules():
            if isinstance(module, (layers.MHCSequential, layers.MHCConv2d, layers.MHCBasicBlock, layers.MHCBottleneck)):
                module.clear_history()
            clear = module.__dict__.get("clear_mhc_history")
            if callable(clear):
                clear()

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int, *args) -> None:
        """Empty every history buffer of ``pl_module`` (a no-op between calls)."""
        self._clear_all_history(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        """As `on_train_batch_start`."""
        self._clear_all_history(pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        """As `on_train_batch_start`."""
        self._clear_all_history(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int, *args) -> None:
        """Every ``log_interval`` batches, log each layer's latest weight and the entropy of its weights."""
        if self.log_mixing_weights and (batch_idx + 1) % self.log_interval == 0:
            self._log_alphas(pl_module)

    def _log_alphas(self, pl_module) -> None:
        for name, alpha in extract_mixing_weights(pl_module).items():
            entropy = torch.special.entr(alpha.double()).sum().float()
            pl_module.log(f"{self.prefix}/{name}/alpha_latest", alpha[-1], on_step=True)
            pl_module.log(f"{self.prefix}/{name}/entropy", entropy, on_step=True)


_built: dict[type, type] = {}


def _build() -> type:
    base = _callback_base()
    if base not in _built:
        doc = (
            "A Lightning callback: empties history buffers at the start of each train, validation and "
            "test batch (as in the package; a no-op here, where history lives in one call) and every "
            "``log_interval`` training batches logs ``{prefix}/{layer}/alpha_latest`` and "
            "``{prefix}/{layer}/entropy`` through ``pl_module.log``. The weights are the layers' real "
            "mixing weights (`extract_mixing_weights`); the package logged a softmax of the logits "
            "whatever the mode."
        )
        _built[base] = type("MHCLightningCallback", (_CallbackLogic, base), {"__doc__": doc, "__module__": __name__})
    return _built[base]


def __getattr__(name: str):
    if name == "MHCLightningCallback":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
