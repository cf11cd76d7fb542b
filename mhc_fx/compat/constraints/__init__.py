"""`mhc.constraints`: the package's constraint functions, computed by mhc_fx's projections.

They keep the package's meaning: softmax weights (not mhc_fx's Euclidean simplex projection,
which gives exact zeros), softmax weights floored at ``epsilon`` on the latest state, and a
Sinkhorn normalisation with a fixed iteration count.
"""

from .identity import project_identity_preserving
from .matrix import project_doubly_stochastic
from .simplex import project_simplex

__all__ = ["project_doubly_stochastic", "project_identity_preserving", "project_simplex"]
