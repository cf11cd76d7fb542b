"""The explicit layers: `MHCSequential` and `MHCSkip` (the API of the `mhc` package, without its defects).

No graph rewrite here: you place the hyper-connections yourself. `MHCSequential(blocks)` is a drop-in
for a residual stack of `blocks`; `MHCSkip` is one site inside your own forward, given the history
list you keep (oldest state first, the current stream last). Both equal the plain residual network
exactly at init in mode "mhc", and learn to mix older states from the first step.

    python examples/seed_api.py [--steps 200]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import mhc_fx


def mlp_block(dim: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


class ResidualStack(nn.Module):
    """The plain residual network: x = x + f(x) per block."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class OwnLoop(nn.Module):
    """`MHCSkip` in your own forward: each skip mixes the last H states of the list you pass."""

    def __init__(self, dim: int, depth: int, max_history: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(mlp_block(dim) for _ in range(depth))
        self.skips = nn.ModuleList(mhc_fx.MHCSkip(max_history=max_history, mode="hc") for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        history = [x]
        for block, skip in zip(self.blocks, self.skips):
            x = skip(block(x), history)  # block(x) + sum_k alpha_k * history[-K:][k]
            history.append(x)  # a plain list inside one call: nothing leaks into the next batch
        return x


def train(model: nn.Module, steps: int, dim: int, generator: torch.Generator) -> float:
    """Fit y = sin(3 x W) on random inputs; returns the last loss."""
    target = torch.randn(dim, dim, generator=generator) / dim**0.5
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        x = torch.randn(64, dim, generator=generator)
        loss = nn.functional.mse_loss(model(x), torch.sin(3 * x @ target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def print_alphas(skips, max_history: int) -> None:
    for layer, skip in enumerate(skips):
        k = min(layer + 1, max_history)  # layer l mixes the last min(l + 1, H) states
        alpha = skip.eval().weights(k).tolist()
        print(f"  layer {layer}: " + " ".join(f"{a:.3f}" for a in alpha))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    dim, depth, history = 16, 6, 4

    print("1. MHCSequential: a drop-in for a residual stack")
    blocks = [mlp_block(dim) for _ in range(depth)]
    plain = ResidualStack(blocks)
    seq = mhc_fx.MHCSequential(blocks, max_history=history, mode="mhc")  # shares the blocks with `plain`
    x = torch.randn(8, dim)
    with torch.no_grad():
        print(f"  equal to the residual stack at init: {torch.equal(seq(x), plain(x))}")
    loss = train(seq, args.steps, dim, torch.Generator().manual_seed(0))
    print(f"  after {args.steps} steps: loss {loss:.4f}; learned alpha (oldest state first):")
    print_alphas(seq.skip_layers, history)

    print("\n2. MHCSkip in your own forward (mode 'hc': softmax, latest-biased at init)")
    own = OwnLoop(dim, depth, history)
    print(f"  alpha at init, layer {depth - 1}: " + " ".join(f"{a:.3f}" for a in own.skips[-1].weights(history)))
    loss = train(own, args.steps, dim, torch.Generator().manual_seed(0))
    print(f"  after {args.steps} steps: loss {loss:.4f}; learned alpha:")
    print_alphas(own.skips, history)

    print("\n3. For a model you did not write: mhc_fx.convert finds the same sites in its graph")
    converted = mhc_fx.convert(ResidualStack([mlp_block(dim) for _ in range(depth)]), max_history=history)
    report = mhc_fx.explain(converted)
    print(f"  {len(report.sites)} sites in {len(report.chains)} chain(s): " + ", ".join(s.name for s in report.sites))


if __name__ == "__main__":
    main()
