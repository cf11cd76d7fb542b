"""`mhc.constraints.identity`: softmax weights with a floor on the latest state."""

from __future__ import annotations

import torch

from ... import projections


def project_identity_preserving(logits: torch.Tensor, epsilon: float = 0.1, temperature: float = 1.0) -> torch.Tensor:
    """``(1 - epsilon) * softmax(logits / temperature)`` plus ``epsilon`` on the last entry: the
    latest state always weighs at least ``epsilon``. ``epsilon`` must be in [0, 1)."""
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    alphas = projections.softmax(logits, temperature) * (1.0 - epsilon)
    latest = torch.zeros_like(alphas)
    latest[..., -1] = epsilon
    return alphas + latest  # out of place: the softmax's autograd graph stays intact
