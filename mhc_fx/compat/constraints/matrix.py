"""`mhc.constraints.matrix`: doubly stochastic matrices by mhc_fx's log-domain Sinkhorn."""

from __future__ import annotations

import torch

from ... import projections


def project_doubly_stochastic(logits: torch.Tensor, iterations: int = 10, temperature: float = 1.0) -> torch.Tensor:
    """A doubly stochastic matrix from square ``logits`` (last two dims): exactly ``iterations``
    row-then-column normalisations of ``exp(logits / temperature)``, in the log domain (mhc_fx's
    `projections.sinkhorn` with ``tol=None``: no host sync, no overflow for large logits)."""
    return projections.sinkhorn(logits, temperature=temperature, max_iter=iterations, tol=None)
