"""Automatic mixed precision: torch.autocast(bfloat16) on CPU around a converted model."""

from __future__ import annotations

import torch

import mhc_fx
from tests.helpers import perturb_mixing
from tests.models.gpt import GPT


def _models():
    torch.manual_seed(0)
    original = GPT(layers=3, dim=32)
    return original, mhc_fx.convert(original)


def test_autocast_equals_the_original_at_init():
    original, converted = _models()
    x = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = original(x)
        out = converted(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_autocast_close_to_float32_with_trained_weights_eager_and_compiled():
    _, converted = _models()
    perturb_mixing(converted, seed=3)
    x = torch.randint(0, 64, (2, 16))
    reference = converted(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = converted(x)
        torch._dynamo.reset()
        compiled = torch.compile(converted, backend="mhc")(x)
    scale = reference.abs().max()
    assert (eager.float() - reference).abs().max() <= 0.02 * scale
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=2e-2, atol=2e-2 * scale.item())
    # the mixing itself accumulated in float32: gradients flow in float32 to the logits
    eager.float().square().mean().backward()
    grads = [p.grad for n, p in converted.named_parameters() if n.startswith("mhc.")]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
