"""`mhc.utils`: injection, profiling, seeding, tensor helpers and the plots, under the package's
names. ``MHCLightningCallback`` is loaded on first use (it needs PyTorch Lightning)."""

from .compat import autocast_context, compile_model
from .decorators import mhc_compatible
from .injection import InjectedMHC, inject_mhc, inject_mhc_default
from .logging import get_logger
from .profiling import ForwardProfiler
from .seed import set_seed
from .tensor_ops import ensure_list, get_last_k
from .visualization import (
    create_training_dashboard,
    extract_mixing_weights,
    plot_gradient_flow,
    plot_history_contribution,
    plot_mixing_weights,
)

__all__ = [
    "ForwardProfiler",
    "InjectedMHC",
    "autocast_context",
    "compile_model",
    "create_training_dashboard",
    "ensure_list",
    "extract_mixing_weights",
    "get_last_k",
    "get_logger",
    "inject_mhc",
    "inject_mhc_default",
    "mhc_compatible",
    "plot_gradient_flow",
    "plot_history_contribution",
    "plot_mixing_weights",
    "set_seed",
]


def __getattr__(name: str):
    if name == "MHCLightningCallback":  # lazily: building it imports Lightning
        from .lightning_callback import MHCLightningCallback

        return MHCLightningCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
