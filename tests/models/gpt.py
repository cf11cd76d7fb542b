"""Test models in the nanoGPT family: the pre-norm GPT (from mhc_fx.demo) and a post-norm variant."""

from __future__ import annotations

import torch
from torch import nn

from mhc_fx.demo.model import GPT, MLP, Block, CausalSelfAttention

__all__ = ["GPT", "Block", "CausalSelfAttention", "MLP", "PostNormBlock", "PostNormTransformer"]


class PostNormBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_1 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)
        self.ln_2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(self.mlp(x) + x)


class PostNormTransformer(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(*(PostNormBlock(dim, heads) for _ in range(layers)))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(idx)))
