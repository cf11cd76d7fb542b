"""Residual adds written in forms the first analysis missed: parallel blocks left to right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mhc_fx
from tests.helpers import perturb_mixing


class ParallelBlock(nn.Module):
    """``x + attn(h) + mlp(h)``, i.e. ``(x + attn(h)) + mlp(h)`` (StableLM, GPT-J-style own code)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.ln, self.attn, self.mlp = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        h = self.ln(x)
        return x + self.attn(h) + self.mlp(h)


@pytest.mark.parametrize("example", [False, True], ids=["fx", "fx-shapes"])
def test_a_parallel_block_left_to_right_is_two_sites_of_one_chain(example):
    torch.manual_seed(0)
    model = nn.Sequential(*(ParallelBlock() for _ in range(3)))
    x = torch.randn(2, 5, 16)
    converted = mhc_fx.convert(model, example_inputs=(x,) if example else None)
    report = mhc_fx.explain(converted)
    assert len(report.chains) == 1
    assert [(s.position, s.history) for s in report.sites] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 4), (6, 4)]
    assert torch.equal(converted(x), model(x))
    # the second add's stream is x + attn(h): its window holds it and x
    perturb_mixing(converted, seed=1)
    converted(x).square().mean().backward()
    assert dict(converted.named_parameters())["mhc.0.site1"].grad.abs().sum() > 0


class BranchSumFirst(nn.Module):
    """``attn(h) + mlp(h) + x`` (GPT-J, GPT-NeoX, Phi): the branch sum is no site, the last add is."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.ln, self.attn, self.mlp = nn.LayerNorm(dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        h = self.ln(x)
        return self.attn(h) + self.mlp(h) + x


def test_a_parallel_block_with_the_branch_sum_first_is_one_site():
    torch.manual_seed(0)
    model = nn.Sequential(*(BranchSumFirst() for _ in range(3)))
    converted = mhc_fx.convert(model)
    report = mhc_fx.explain(converted)
    assert [(s.chain, s.position) for s in report.sites] == [(0, 1), (0, 2), (0, 3)]
    assert any("neither operand" in s.reason for s in report.skipped)
    x = torch.randn(2, 5, 16)
    assert torch.equal(converted(x), model(x))


class ReshapeBlock(nn.Module):
    """timm Swin's pattern: the stream re-viewed between its two residual adds and back."""

    def __init__(self, dim: int = 16, reshape: bool = True) -> None:
        super().__init__()
        self.f, self.g, self.reshape = nn.Linear(dim, dim), nn.Linear(dim, dim), reshape

    def forward(self, x):
        b, h, w, c = x.shape
        x = x + self.f(x)
        if self.reshape:
            x = x.reshape(b, -1, c)
        x = x + self.g(x)
        if self.reshape:
            x = torch.reshape(x, (b, h, w, c))
        return x


class PermuteBlock(nn.Module):
    """NHWC <-> NCHW between two residual adds (timm MaxViT / CoAtNet), a 1x1 conv on the NCHW side."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.f, self.conv = nn.Linear(dim, dim), nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        x = x + self.f(x)
        x = x.permute(0, 3, 1, 2)
        x = x + self.conv(x)
        return x.permute(0, 2, 3, 1)


class ChannelsLastBlock(nn.Module):
    """`PermuteBlock` with the 1x1 conv applied as a linear map on channels-last: the same function."""

    def __init__(self, block: PermuteBlock) -> None:
        super().__init__()
        self.f, self.g = block.f, nn.Linear(block.conv.in_channels, block.conv.out_channels)
        with torch.no_grad():
            self.g.weight.copy_(block.conv.weight.flatten(1))
            self.g.bias.copy_(block.conv.bias)

    def forward(self, x):
        x = x + self.f(x)
        return x + self.g(x)


def _mixing_state(model: nn.Module) -> dict:
    return {k: v for k, v in model.state_dict().items() if k.startswith("mhc.")}


@pytest.mark.parametrize("example", [False, True], ids=["fx", "fx-shapes"])
def test_a_reshape_between_two_adds_keeps_the_chain(example):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 16)
    model = nn.Sequential(ReshapeBlock(), ReshapeBlock())
    converted = mhc_fx.convert(model, example_inputs=(x,) if example else None)
    report = mhc_fx.explain(converted)
    assert len(report.chains) == 1 and [s.history for s in report.sites] == [1, 2, 3, 4]
    assert torch.equal(converted(x), model(x))
    # with mixing: the window re-viewed like the stream gives the model that never reshapes
    plain = nn.Sequential(ReshapeBlock(reshape=False), ReshapeBlock(reshape=False))
    plain.load_state_dict(model.state_dict())
    plain = mhc_fx.convert(plain)
    perturb_mixing(converted, seed=1)
    plain.load_state_dict(converted.state_dict())
    torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=0)


def test_a_permute_between_two_adds_keeps_the_chain():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 8)
    model = nn.Sequential(PermuteBlock(), PermuteBlock())
    converted = mhc_fx.convert(model, example_inputs=(x,))
    report = mhc_fx.explain(converted)
    assert len(report.chains) == 1 and [s.history for s in report.sites] == [1, 2, 3, 4]
    assert torch.equal(converted(x), model(x))
    perturb_mixing(converted, seed=1)
    reference = mhc_fx.convert(nn.Sequential(*(ChannelsLastBlock(b) for b in model)))
    mixing = _mixing_state(converted)
    assert mixing and not reference.load_state_dict(mixing, strict=False).unexpected_keys
    torch.testing.assert_close(converted(x), reference(x), rtol=1e-5, atol=1e-6)
    # fresh Dynamo state: shapes other tests compiled (nn.Sequential's code is shared) would make
    # this compile dynamic, where torch 2.13's Inductor fails on a 1x1 conv of a permuted input,
    # with or without mhc_fx (`cannot determine truth value of Relational`)
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="mhc", fullgraph=True)
    torch.testing.assert_close(compiled(x), converted(x), rtol=1e-5, atol=1e-6)
