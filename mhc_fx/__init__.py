"""mhc_fx: manifold-constrained hyper-connections for any PyTorch model, through the compiler.

Public names:
    MHCConfig                      validated options (mode, max_history, constraint, ...)
    mix                            the fused-able mixing op (torch.ops.mhc_fx.mix)
    MHCSkip, MHCSequential         seed-compatible explicit layers
    projections                    the math: simplex / floored simplex / softmax / Gumbel / Sinkhorn
"""

from . import projections
from .config import MHCConfig
from .nn import MHCSequential, MHCSkip
from .ops import mix

__version__ = "0.1.0"

__all__ = ["MHCConfig", "MHCSequential", "MHCSkip", "mix", "projections", "__version__"]
