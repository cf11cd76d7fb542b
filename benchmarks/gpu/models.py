"""The GPT, its inputs and its loss, shared by the stages."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from tests.models.gpt import GPT


def gpt_inputs(layers: int, dim: int, seq: int, batch: int, device, vocab: int = 65):
    torch.manual_seed(0)
    model = GPT(vocab=vocab, dim=dim, heads=max(1, dim // 64), layers=layers, block_size=seq).to(device)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    targets = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    return model, idx, targets


def loss_of(model, idx, targets):
    return F.cross_entropy(model(idx).flatten(0, 1).float(), targets.flatten())


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()
