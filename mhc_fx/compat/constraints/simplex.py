"""`mhc.constraints.simplex`: the package's "simplex" weights (a softmax), by mhc_fx's softmax."""

from __future__ import annotations

import torch

from ... import projections


def project_simplex(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the last dim (the package's "simplex" weights).

    The package computes a softmax here, whatever its docs say; mhc_fx's Euclidean projection,
    which gives exact zeros, is `mhc_fx.projections.project_simplex`."""
    return projections.softmax(logits, temperature)
