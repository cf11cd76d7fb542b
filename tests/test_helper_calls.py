"""Class 2: residual adds that live outside the forward, in code the forward calls.

A module-level helper (HF Falcon/Bloom's ``dropout_add``), another method of the block
(``self._out(h, x)``), a callable object (diffusers' attention processors) and ``super().forward``
in an override: `convert` follows these calls into the model's own code and rewrites the adds there,
per call site, so that the chain spans the blocks. The helper itself is never modified.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mhc_fx
from tests.helpers import assert_compiles_like_eager, assert_exact, chains, perturb_mixing

DIM = 8


def dropout_add(x: torch.Tensor, residual: torch.Tensor, prob: float, training: bool) -> torch.Tensor:
    """Falcon's and Bloom's spelling of the residual add (a module-level function)."""
    return residual + F.dropout(x, p=prob, training=training)


class FunctionBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(DIM, DIM)

    def forward(self, x):
        return dropout_add(self.f(x), x, 0.0, self.training)


class MethodBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(DIM, DIM)
        self.g = nn.Linear(DIM, DIM)

    def _out(self, h, residual):
        return h + residual

    def forward(self, x):
        x = self._out(self.f(x), x)
        return self._out(self.g(x), x)


class Processor:
    """A diffusers-style attention processor: a plain object called with the module."""

    def __call__(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x + attn.f(x)


class DoublingProcessor:
    def __call__(self, attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x + 2 * attn.f(x)


class ProcessorBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(DIM, DIM)
        self.processor = Processor()

    def forward(self, x):
        return self.processor(self, x)


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(DIM, DIM)

    def forward(self, x):
        return x + self.f(x)


class Override(Base):
    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Linear(DIM, DIM)

    def forward(self, x):
        x = super().forward(x)
        return x + self.g(x)


BLOCKS = {"function": FunctionBlock, "method": MethodBlock, "processor": ProcessorBlock, "super_forward": Override}
SITES_PER_BLOCK = {"function": 1, "method": 2, "processor": 1, "super_forward": 2}


def stack(kind: str, depth: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(BLOCKS[kind]() for _ in range(depth)))


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_adds_in_called_code_are_sites_of_one_chain_and_exact_at_init(kind):
    model = stack(kind)
    converted = assert_exact(model, torch.randn(4, DIM))
    report = mhc_fx.explain(converted)
    assert chains(report) == (3 * SITES_PER_BLOCK[kind],), str(report)
    assert report.skipped == [], str(report)


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_followed_sites_mix_and_compile_like_eager(kind):
    converted = perturb_mixing(mhc_fx.convert(stack(kind)), scale=0.5)
    x = torch.randn(4, DIM)
    want = converted(x)
    assert not torch.allclose(want, stack(kind)(x))  # the perturbed weights really mix
    assert_compiles_like_eager(converted, x, want, atol=1e-6)


def test_followed_sites_have_gradients_like_a_float64_reference():
    converted = perturb_mixing(mhc_fx.convert(stack("method")), scale=0.5).double()
    x = torch.randn(4, DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: converted(t).sum(), (x,))
    converted(x).sum().backward()
    mixing = [p for n, p in converted.named_parameters() if n.startswith("mhc.")]
    assert mixing and all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixing)


def test_a_shared_helper_is_untouched_outside_the_converted_model():
    before = dropout_add.__code__
    converted = perturb_mixing(mhc_fx.convert(stack("function")))
    assert dropout_add.__code__ is before  # the helper is rewritten as a copy, never in place
    plain = FunctionBlock()
    x = torch.randn(4, DIM)
    converted(x)
    assert torch.equal(plain(x), x + plain.f(x))  # unconverted code calling the helper: a plain add
    assert torch.equal(dropout_add(x, x, 0.0, False), x + x)


def test_a_processor_swapped_after_convert_runs_unchanged():
    converted = perturb_mixing(mhc_fx.convert(stack("processor")))
    x = torch.randn(4, DIM)
    converted[1].processor = DoublingProcessor()
    calls = []
    original = DoublingProcessor.__call__
    DoublingProcessor.__call__ = lambda self, attn, h: calls.append(1) or original(self, attn, h)
    try:
        y = converted(x)
    finally:
        DoublingProcessor.__call__ = original
    assert calls == [1]  # the new processor ran, as written
    y.sum().backward()  # the chain mixes the states it produced (block 1's add is a plain add now)
    # the same swap on the original model with the mixing at identity gives the original's output
    model = stack("processor")
    model[1].processor = DoublingProcessor()
    converted = mhc_fx.convert(stack("processor"))
    converted[1].processor = DoublingProcessor()
    assert torch.equal(converted(x), model(x))


def test_show_rewrite_marks_the_call_that_holds_a_site():
    view = str(mhc_fx.show_rewrite(mhc_fx.convert(stack("method"))))
    lines = view.splitlines()
    call = next(i for i, line in enumerate(lines) if "→" in line and "self._out(self.f(x), x)" in line)
    first = re.search(r"add#(\d+)\.0 → 0\.site0", lines[call + 2])
    second = re.search(r"add#(\d+)\.0 → 0\.site1", view)
    # the forward has no add of its own, so its calls are numbered from 0 (`self.f`, `self._out`, ...)
    assert first and second and int(first[1]) < int(second[1]), view
