"""Small helpers shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


def perturb_mixing(model: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every ``mhc.*`` logit, so that the sites really mix."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("mhc."):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model
