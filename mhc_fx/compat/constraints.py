"""The `mhc` package's constraint functions, computed by mhc_fx's projections.

They keep the package's meaning: softmax weights (not mhc_fx's Euclidean simplex projection,
which gives exact zeros), softmax weights floored at ``epsilon`` on the latest state, and a
Sinkhorn normalisation with a fixed iteration count.
"""

from __future__ import annotations

import torch

from .. import projections


def project_simplex(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last dim (the package's "simplex" weights)."""
    return projections.softmax(logits, temperature)


def project_identity_preserving(logits: torch.Tensor, epsilon: float = 0.1, temperature: float = 1.0) -> torch.Tensor:
    """``(1 - epsilon) * softmax(logits / temperature)`` plus ``epsilon`` on the last entry: the
    latest state always weighs at least ``epsilon``. ``epsilon`` must be in [0, 1)."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    alphas = projections.softmax(logits, temperature) * (1.0 - epsilon)
    latest = torch.zeros_like(alphas)
    latest[..., -1] = epsilon
    return alphas + latest  # out of place: the softmax's autograd graph stays intact


def project_doubly_stochastic(logits: torch.Tensor, iterations: int = 10, temperature: float = 1.0) -> torch.Tensor:
    """A doubly stochastic matrix from square ``logits`` (last two dims): exactly ``iterations``
    row-then-column normalisations of ``exp(logits / temperature)``, in the log domain (mhc_fx's
    `projections.sinkhorn` with ``tol=None``: no host sync, no overflow for large logits)."""
    return projections.sinkhorn(logits, temperature=temperature, max_iter=iterations, tol=None)
