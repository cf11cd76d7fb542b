"""The GPT, its inputs and its loss, shared by the stages."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..models import GPTSize, base_gpt


def gpt_inputs(layers: int, dim: int, seq: int, batch: int, device):
    """The end-to-end benchmark's GPT (seed 0, heads of 64) on ``device``, with tokens and targets."""
    size = GPTSize(layers=layers, dim=dim, heads=max(1, dim // 64), seq=seq, batch=batch)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, size.vocab, (batch, seq), generator=gen).to(device)
    targets = torch.randint(0, size.vocab, (batch, seq), generator=gen).to(device)
    return base_gpt(size).to(device), idx, targets


def loss_of(model, idx, targets):
    return F.cross_entropy(model(idx).flatten(0, 1).float(), targets.flatten())


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
