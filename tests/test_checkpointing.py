"""Activation checkpointing around converted blocks: written in the model's own forward, or applied
from outside after convert (checkpoint_wrapper, partial(checkpoint, block.forward), selective AC,
torch's composable checkpoint), eager and compiled."""

from __future__ import annotations

import copy
import functools
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import checkpoint

import mhc_fx
from mhc_fx.transform import replay
from tests.helpers import CHECKPOINT_FORMS, apply_checkpointing, perturb_mixing
from tests.models.gpt import GPT


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


# -- checkpointing applied from outside, after convert ------------------------------------------------------------
def _gpt(mode: str, **options):
    torch.manual_seed(0)
    return perturb_mixing(mhc_fx.convert(GPT(layers=3, dim=16), mode=mode, **options), seed=1).train()


def _gpt_grads(model, runnable, idx):
    model.zero_grad(set_to_none=True)
    runnable(idx).square().mean().backward()
    return {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_grads(got: dict, expected: dict, rtol: float) -> None:
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        scale = g.abs().max().clamp_min(1e-12)
        assert (got[name] - g).abs().max() <= rtol * scale, name


MODES = {
    "residual": {"mode": "residual"},
    "hc": {"mode": "hc"},
    "mhc": {"mode": "mhc"},
    "mhc_identity": {"mode": "mhc", "constraint": "identity"},
}
IDX = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("form", CHECKPOINT_FORMS)
@pytest.mark.parametrize("mode", MODES)
def test_checkpointing_applied_after_convert_gives_the_same_gradients(form, mode):
    expected = _gpt_grads(plain := _gpt(**MODES[mode]), plain, IDX)
    model = _gpt(**MODES[mode])
    recomputed = []
    model.blocks[2].mlp.register_forward_pre_hook(lambda *_: recomputed.append(1))
    apply_checkpointing(form, model, list(model.blocks))
    got = _gpt_grads(model, model, IDX)
    assert len(recomputed) == 2, "the block must run in forward and again in backward"
    assert any(n.startswith("mhc.") for n in expected) == (mode != "residual")
    _assert_same_grads(got, expected, rtol=1e-6)


# torch's composable checkpoint(module) fails under torch.compile on the unconverted model too
# (CheckpointError: recomputed values have other metadata), so it is checked in eager only.
@pytest.mark.parametrize("form", ["checkpoint_wrapper", "forward_partial", "selective"])
@pytest.mark.parametrize("mode", ["hc", "mhc"])
def test_checkpointing_applied_after_convert_compiled(form, mode):
    # float64: compiled and eager sum in other orders, and a mixing logit's gradient is a small
    # difference of large terms (float32 rounding alone reaches 1e-5 of it on some CPUs)
    expected = _gpt_grads(plain := _gpt(**MODES[mode]).double(), plain, IDX)
    model = _gpt(**MODES[mode]).double()
    apply_checkpointing(form, model, list(model.blocks))
    torch._dynamo.reset()
    got = _gpt_grads(model, torch.compile(model, backend="mhc"), IDX)
    _assert_same_grads(got, expected, rtol=1e-5)


class _SharedBlockStack(nn.Module):
    """One block applied twice per call (shared weights), between two other blocks."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.first, self.shared, self.last = Block(dim), Block(dim), Block(dim)

    def forward(self, x):
        return self.last(self.shared(self.shared(self.first(x))))


def test_a_block_checkpointed_twice_in_one_call_replays_each_call():
    torch.manual_seed(0)
    plain = perturb_mixing(mhc_fx.convert(_SharedBlockStack()), seed=2)
    model = copy.deepcopy(plain)
    apply_checkpointing("checkpoint_wrapper", model, [model.shared])
    x = torch.randn(3, 8)
    assert len(mhc_fx.explain(plain).sites) == 4
    _assert_same_grads(_gpt_grads(model, model, x), _gpt_grads(plain, plain, x), rtol=1e-6)


def test_replay_keeps_no_tensor_alive_after_the_backward():
    model = _gpt("mhc")
    apply_checkpointing("checkpoint_wrapper", model, list(model.blocks))
    states = []
    model.blocks[1].register_forward_hook(lambda mod, args, out: states.append(weakref.ref(out)))
    loss = model(IDX).square().mean()
    gc.collect()
    assert states and all(s() is not None for s in states), "the states are alive until the backward"
    loss.backward()
    del loss
    gc.collect()
    assert all(s() is None for s in states), "a replayed state outlived its backward"


def test_the_checkpoint_frame_is_found_in_forward_and_recompute():
    # replay reads torch.utils.checkpoint's hooks; this fails loudly if a torch release changes them
    seen = []

    def region(x):
        seen.append(replay.checkpoint_frame(recomputing=replay.in_backward()))
        return x.sin().sin()

    x = torch.randn(3, requires_grad=True)
    checkpoint(region, x, use_reentrant=False).sum().backward()
    assert len(seen) == 2 and seen[0] is not None and seen[0] is seen[1]
    assert replay.checkpoint_frame(recomputing=False) is None


def test_reentrant_checkpointing_applied_from_outside_is_a_clear_error():
    model = _gpt("mhc")
    wrap = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.REENTRANT)
    blocks = list(model.blocks)
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrap, check_fn=lambda m: m in blocks)
    loss = model(IDX).square().mean()
    with pytest.raises(RuntimeError, match="use_reentrant=False"):
        loss.backward()
