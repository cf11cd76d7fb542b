"""mhc_fx: manifold-constrained hyper-connections for any PyTorch model, through the compiler.

Public names:
    MHCConfig                      validated options (mode, max_history, constraint, ...)
    mix                            the fused-able mixing op (torch.ops.mhc_fx.mix)
    MHCSkip, MHCSequential         seed-compatible explicit layers
    projections                    the math: simplex / floored simplex / softmax / Gumbel / Sinkhorn
    convert, explain               rewrite a model's residual adds into sites; report what was done
    mixing_weights, inject_mhc     the projected weights per site; seed-compatible scoped convert
    from_pretrained, is_converted  reload a converted Hugging Face checkpoint; test for a converted model
    plot_weights, show_rewrite,    inspection: alpha heat map, the rewrite before/after,
    plot_streams                   the H_res / H_pre / H_post of n-stream sites,
    history_contributions, gradient_flow, WeightLogger (+ plot_*)   per-site contributions, gradients, alpha log
"""

from . import projections
from .config import MHCConfig
from .inspect import (
    RewriteView,
    WeightLogger,
    gradient_flow,
    history_contributions,
    plot_contributions,
    plot_gradient_flow,
    plot_streams,
    plot_weights,
    show_rewrite,
)
from .nn import MHCSequential, MHCSkip
from .ops import mix
from .transform import Report, convert, explain, from_pretrained, inject_mhc, is_converted, mixing_weights

__version__ = "0.1.0"

from . import backend as _backend  # noqa: E402

_backend.register()

__all__ = [
    "MHCConfig",
    "MHCSequential",
    "MHCSkip",
    "Report",
    "RewriteView",
    "WeightLogger",
    "__version__",
    "convert",
    "explain",
    "from_pretrained",
    "gradient_flow",
    "history_contributions",
    "inject_mhc",
    "is_converted",
    "mix",
    "mixing_weights",
    "plot_contributions",
    "plot_gradient_flow",
    "plot_streams",
    "plot_weights",
    "projections",
    "show_rewrite",
]
