"""Calls whose path differs from the analysed one, broadcasting adds, and conversions where
nothing mixes: never a crash where the original ran, never a silent no-op."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mhc_fx
from mhc_fx.projections import mixing_weights
from tests.helpers import perturb_mixing

MODES = [{"mode": "residual"}, {"mode": "hc"}, {"mode": "mhc"}, {"mode": "mhc", "constraint": "identity"}]


class BroadcastBlock(nn.Module):
    """``h + proj(h).mean(-1, keepdim=True)`` broadcasts: no residual site, whatever fx saw."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.proj, self.f = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, h):
        h = h + self.proj(h).mean(-1, keepdim=True)
        return h + self.f(h)


@pytest.mark.parametrize("options", MODES, ids=lambda o: "-".join(map(str, o.values())))
def test_a_broadcasting_add_never_fails_where_the_original_ran(options):
    torch.manual_seed(0)
    model = nn.Sequential(BroadcastBlock(), BroadcastBlock())
    x = torch.randn(2, 10, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hc/mhc may have no mixing site here: tested elsewhere
        converted = mhc_fx.convert(model, **options)  # fx, no example inputs: shapes unknown
    converted.eval()
    if options["mode"] != "hc":
        assert torch.equal(converted(x), model(x))
    perturb_mixing(converted, seed=1)
    converted.train()(x).square().mean().backward()  # runs in training too


class Block(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.f = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.f(x)


class LayerDropStack(nn.Module):
    """Skips the blocks listed in ``skip`` while training, as LayerDrop does at random."""

    def __init__(self, depth: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.skip: set[int] = set()

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            if self.training and i in self.skip:
                continue
            x = block(x)
        return x


def test_a_call_that_skips_layers_mixes_the_states_it_produced():
    torch.manual_seed(0)
    model = perturb_mixing(mhc_fx.convert(LayerDropStack(), max_history=4), seed=2)
    x = torch.randn(3, 8)
    model.skip = {1}
    out = model.train()(x)
    # by hand: blocks 0, 2, 3 ran; block 2's site (position 3, K = 3) holds 2 states, block 3's
    # (position 4, K = 4) holds 3: each uses the latest logits of its own
    config, theta = model.mhc.config, dict(model.mhc.blocks.named_parameters())
    s0 = x
    s2 = s0 + model.blocks[0].f(s0)
    w2 = mixing_weights(theta["2.site0"][-2:], config, training=True)
    s3 = model.blocks[2].f(s2) + w2[0] * s0 + w2[1] * s2
    w3 = mixing_weights(theta["3.site0"][-3:], config, training=True)
    expected = model.blocks[3].f(s3) + w3[0] * s0 + w3[1] * s2 + w3[2] * s3
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    out.square().mean().backward()
    assert theta["3.site0"].grad[0] == 0 and theta["3.site0"].grad[1:].abs().sum() > 0


def test_layerdrop_training_runs_and_eval_is_exact():
    torch.manual_seed(0)
    original = LayerDropStack(depth=6)
    model = mhc_fx.convert(original)
    x = torch.randn(3, 8)
    assert torch.equal(model.eval()(x), original.eval()(x))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(8):
        model.skip = {i for i in range(6) if torch.rand((), generator=gen) < 0.4}
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())


class Widening(nn.Module):
    """A residual block, then a projection to the next width: every chain holds one site."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.f, self.proj = nn.Linear(dim, dim), nn.Linear(dim, out)

    def forward(self, x):
        return self.proj(x + self.f(x))


def test_a_conversion_where_nothing_mixes_says_so():
    model = nn.Sequential(Widening(8, 12), Widening(12, 16), Widening(16, 8))
    example = (torch.randn(2, 8),)
    with pytest.warns(UserWarning, match="none of the 3 sites of Sequential mixes anything") as record:
        converted = mhc_fx.convert(model, example_inputs=example)
    assert "projection shortcuts" in str(record[0].message)
    assert str(mhc_fx.explain(converted)).splitlines()[1].startswith("WARNING: none of the 3 sites")
    assert not [n for n, _ in converted.named_parameters() if n.startswith("mhc.")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # residual mode has nothing to mix by design: no warning
        mhc_fx.convert(model, mode="residual", example_inputs=example)


def test_a_model_without_residual_adds_says_so():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="no residual site found in Sequential"):
        converted = mhc_fx.convert(model)
    x = torch.randn(2, 4)
    assert torch.equal(converted(x), model(x))


def test_a_block_called_on_its_own_mixes_what_it_has():
    # its sites expect the states of the blocks before it; alone, the window is its own
    torch.manual_seed(0)
    model = perturb_mixing(mhc_fx.convert(LayerDropStack()), seed=1)
    x = torch.randn(2, 8)
    block = model.blocks[3]
    assert torch.equal(block(x), x + block.f(x))
