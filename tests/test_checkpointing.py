"""torch.utils.checkpoint written in a model's own forward, around converted blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import mhc_fx
from tests.helpers import perturb_mixing


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.ff(self.norm(x))


class Stack(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 5, mode: str | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.mode = mode  # None: no checkpointing; else the use_reentrant flag as a string

    def forward(self, x):
        for block in self.blocks:
            if self.mode is None:
                x = block(x)
            elif self.mode == "default":
                x = checkpoint(block, x)
            else:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=self.mode == "reentrant")
        return x


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    model(x).square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, x.grad


def _perturbed(mode):
    torch.manual_seed(0)
    return perturb_mixing(mhc_fx.convert(Stack(mode=mode)), seed=1)


def test_non_reentrant_checkpoint_in_user_forward_gives_the_same_gradients():
    plain = _perturbed(None)
    checkpointed = copy.deepcopy(plain)
    checkpointed.mode = "non-reentrant"
    x = torch.randn(3, 8)
    recomputed = []
    checkpointed.blocks[2].ff.register_forward_hook(lambda *_: recomputed.append(1))
    (g_plain, gx_plain), (g_ckpt, gx_ckpt) = _grads(plain, x), _grads(checkpointed, x)
    assert len(recomputed) == 2, "the block must run in forward and again in backward"
    assert torch.equal(plain(x), checkpointed(x))
    torch.testing.assert_close(gx_ckpt, gx_plain, rtol=1e-6, atol=1e-7)
    assert any(n.startswith("mhc.") for n in g_plain)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("mode", ["reentrant", "default"])
def test_reentrant_checkpoint_is_a_clear_error(mode):
    model = _perturbed(mode)
    with pytest.raises(NotImplementedError, match="use_reentrant=False"):
        model(torch.randn(2, 8, requires_grad=True))


def test_checkpoint_outside_a_scope_is_untouched():
    # a converted block called on its own runs as a plain module under checkpoint
    model = _perturbed("non-reentrant")
    x = torch.randn(2, 8, requires_grad=True)
    out = checkpoint(model.blocks[0], x, use_reentrant=False)
    torch.testing.assert_close(out, model.blocks[0](x))
