"""A residual network assembled from a list of layer kinds, for the fuzz tests.

Every kind writes its residual add in its own form, so that a random list exercises
operand order, ``torch.add``, in-place adds, post-norm, nested residuals, width
changes (a chain restarts) and non-residual adds inside one forward with loops.
"""

from __future__ import annotations

import torch
from torch import nn

# kind -> (adds executed per layer, of which residual sites)
KINDS = {
    "left": (1, 1),  # x = x + f(x)
    "right": (1, 1),  # x = f(x) + x
    "torch_add": (1, 1),  # x = torch.add(x, f(x))
    "inplace": (1, 1),  # x += f(x)
    "postnorm": (1, 1),  # x = norm(x + f(x))
    "nested": (2, 2),  # x = x + g(x + f(x))
    "bias": (1, 0),  # x = f(x) + bias        (not a residual)
    "resize": (0, 0),  # x = proj(x), a new width
    "plain": (0, 0),  # x = f(x)
}


class Layer(nn.Module):
    def __init__(self, kind: str, width: int, out_width: int) -> None:
        super().__init__()
        self.kind = kind
        self.f = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.g = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.randn(width) * 0.1)
        self.proj = nn.Linear(width, out_width) if kind == "resize" else nn.Identity()

    def forward(self, x):
        kind = self.kind
        if kind == "left":
            x = x + self.f(x)
        elif kind == "right":
            x = self.f(x) + x
        elif kind == "torch_add":
            x = torch.add(x, self.f(x))
        elif kind == "inplace":
            x = x.clone()
            x += self.f(x)
        elif kind == "postnorm":
            x = self.norm(x + self.f(x))
        elif kind == "nested":
            x = x + self.g(x + self.f(x))
        elif kind == "bias":
            x = self.f(x) + self.bias
        elif kind == "resize":
            x = self.proj(x)
        else:
            x = self.f(x)
        return x


class FuzzNet(nn.Module):
    def __init__(self, kinds: list[str], widths: list[int]) -> None:
        super().__init__()
        layers, width = [], widths[0]
        for i, kind in enumerate(kinds):
            out = widths[(i + 1) % len(widths)] if kind == "resize" else width
            layers.append(Layer(kind, width, out))
            width = out
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def expected_counts(kinds: list[str]) -> tuple[int, int]:
    """(additions executed per forward, residual sites)."""
    return sum(KINDS[k][0] for k in kinds), sum(KINDS[k][1] for k in kinds)
