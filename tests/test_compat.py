"""`mhc_fx.compat`: the constraints, `MatrixMHCSkip`, `HistoryBuffer`, presets, profiling and small
utilities, checked against float64 references of the package's formulas (the layers, config,
injection, plots and the package's documented examples: tests/test_compat_*.py)."""

from __future__ import annotations

import os
import random
import time
from unittest import mock

import pytest
import torch
import torch._dynamo.testing

from mhc_fx import compat, projections


def test_project_simplex_is_the_softmax_at_a_temperature():
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    for t in (1.0, 0.5):
        torch.testing.assert_close(compat.project_simplex(logits, t), torch.softmax(logits / t, -1))
    assert torch.autograd.gradcheck(lambda z: compat.project_simplex(z, 0.7), (logits,))
    with pytest.raises(ValueError, match="temperature"):
        compat.project_simplex(logits, 0.0)


def test_project_identity_preserving_floors_the_latest_state():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    alphas = compat.project_identity_preserving(logits, epsilon=0.2, temperature=2.0)
    want = torch.softmax(logits / 2.0, -1) * 0.8
    want = torch.cat([want[..., :-1], want[..., -1:] + 0.2], -1)
    torch.testing.assert_close(alphas, want)
    torch.testing.assert_close(alphas.sum(-1), torch.ones(4, dtype=torch.float64))
    assert (alphas[..., -1] >= 0.2).all()
    assert torch.autograd.gradcheck(lambda z: compat.project_identity_preserving(z, 0.1), (logits,))
    assert torch.equal(compat.project_identity_preserving(torch.zeros(3), 0.0), torch.full((3,), 1 / 3))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="epsilon"):
            compat.project_identity_preserving(logits, epsilon=bad)


def _plain_sinkhorn(logits: torch.Tensor, iterations: int, temperature: float) -> torch.Tensor:
    """The package's formula in float64: exp, then rows then columns normalised ``iterations`` times."""
    m = (logits / temperature).exp()
    for _ in range(iterations):
        m = m / m.sum(-1, keepdim=True)
        m = m / m.sum(-2, keepdim=True)
    return m


def test_project_doubly_stochastic_is_a_fixed_count_sinkhorn():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    for iterations, t in ((10, 1.0), (3, 0.5)):
        got = compat.project_doubly_stochastic(logits, iterations, t)
        torch.testing.assert_close(got, _plain_sinkhorn(logits, iterations, t))
    got = compat.project_doubly_stochastic(logits, iterations=50)
    torch.testing.assert_close(got.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(got.sum(-2), torch.ones(2, 4, dtype=torch.float64))
    assert torch.equal(got, projections.sinkhorn(logits, max_iter=50, tol=None))  # one Sinkhorn in mhc_fx
    assert torch.autograd.gradcheck(lambda z: compat.project_doubly_stochastic(z, 5), (logits,))
    big = torch.full((3, 3), 1e4)
    assert torch.isfinite(compat.project_doubly_stochastic(big)).all()  # log domain: no overflow
    with pytest.raises(ValueError, match="square"):
        compat.project_doubly_stochastic(torch.randn(3, 4))


def test_history_buffer_keeps_the_last_states():
    buffer = compat.HistoryBuffer(max_history=3)
    states = [torch.full((2,), float(i), requires_grad=True) for i in range(5)]
    for s in states:
        buffer.append(s)
    assert len(buffer) == 3 and all(a is b for a, b in zip(buffer.get(), states[2:]))
    assert buffer.get() is not buffer.buffer  # a copy of the list
    buffer.clear()
    assert len(buffer) == 0 and buffer.get() == []
    detached = compat.HistoryBuffer(max_history=2, detach_history=True)
    detached.append(states[0] * 2)
    assert not detached.get()[0].requires_grad
    assert "max_history=2" in repr(detached)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_history"):
            compat.HistoryBuffer(max_history=bad)


def test_presets_are_copies_of_the_package_values():
    stable = compat.get_preset("Stable")
    assert stable == {"mode": "mhc", "constraint": "identity", "epsilon": 0.1, "temperature": 1.0, "init": "identity"}
    stable["epsilon"] = 0.5
    assert compat.get_preset("stable")["epsilon"] == 0.1
    assert compat.get_preset("aggressive")["temperature"] == 0.7
    assert compat.get_preset("research")["epsilon"] == 0.05
    with pytest.raises(ValueError, match="stable"):
        compat.get_preset("fast")


def test_utilities():
    x = torch.ones(2)
    assert compat.ensure_list(x)[0] is x and len(compat.ensure_list(x)) == 1
    items = [x, x]
    assert compat.ensure_list(items) is items
    assert compat.ensure_list((x, x)) == [x, x]
    assert compat.get_last_k([1, 2, 3], 2) == [2, 3]
    assert compat.get_last_k([], 2) == [] and compat.get_last_k([1, 2], 0) == []
    state = random.getstate(), torch.random.get_rng_state(), os.environ.get("PYTHONHASHSEED")
    try:
        compat.set_seed(7, verbose=False)
        first = random.random(), torch.rand(1)
        compat.set_seed(7)
        assert (random.random(), torch.rand(1)) == first
        assert os.environ["PYTHONHASHSEED"] == "7" and torch.backends.cudnn.deterministic
    finally:
        random.setstate(state[0])
        torch.random.set_rng_state(state[1])
        if state[2] is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = state[2]
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False


class _Slow(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)

    def forward(self, x):
        time.sleep(0.002)
        return self.inner(x)


def test_forward_profiler_times_each_module_and_removes_its_hooks():
    model = torch.nn.Sequential(_Slow(), torch.nn.ReLU())
    x = torch.randn(2, 4)
    profiler = compat.ForwardProfiler(model, filter_fn=lambda name, m: name != "1")
    profiler.start()
    profiler.start()  # idempotent: no second set of hooks
    for _ in range(3):
        model(x)
    profiler.stop()
    model(x)  # not recorded
    assert set(profiler.times_ms) == {"", "0", "0.inner"} and all(len(t) == 3 for t in profiler.times_ms.values())
    summary = profiler.summary()
    assert summary["0"] >= 2.0 and summary[""] >= summary["0"] >= summary["0.inner"]
    assert not model._forward_hooks and not model[0]._forward_pre_hooks
    with compat.ForwardProfiler(model) as prof:
        model(x)
    assert set(prof.summary()) == {"", "0", "0.inner", "1"} and not model._forward_pre_hooks


def test_compile_model_defaults_to_the_mhc_backend():
    model = torch.nn.Linear(3, 3)
    with mock.patch.object(torch, "compile", side_effect=lambda m, **kw: (m, kw)):
        assert compat.compile_model(model, fullgraph=True) == (model, {"fullgraph": True, "backend": "mhc"})
        assert compat.compile_model(model, backend="eager")[1] == {"backend": "eager"}
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    assert torch.equal(compat.compile_model(model, backend=counter)(torch.ones(1, 3)), model(torch.ones(1, 3)))
    assert counter.frame_count == 1


def test_autocast_context_is_a_no_op_without_cuda():
    with compat.autocast_context():
        out = torch.nn.Linear(3, 3)(torch.ones(1, 3))
    assert out.dtype == torch.float32 or torch.cuda.is_available()
    with compat.autocast_context("cpu", torch.bfloat16):
        assert not torch.is_autocast_enabled("cpu")


def _matrix_reference(layer, x, history):
    """The package's formula in float64: all K states mixed by the K x K matrix, the last kept."""
    window = history[-layer.max_history :]
    k = len(window)
    logits = layer.mixing_logits[-k:, -k:].double()
    w = _plain_sinkhorn(logits, layer.iterations, 1.0) if layer.doubly_stochastic else torch.softmax(logits, -1)
    stacked = torch.stack([s.double() for s in window], 1)
    mixed = torch.matmul(w, stacked.flatten(2)).view_as(stacked)
    return x.double() + mixed[:, -1]


@pytest.mark.parametrize("doubly_stochastic", [True, False])
def test_matrix_skip_matches_the_package_formula(doubly_stochastic):
    torch.manual_seed(0)
    layer = compat.MatrixMHCSkip(max_history=4, doubly_stochastic=doubly_stochastic, iterations=6)
    with torch.no_grad():
        layer.mixing_logits.mul_(100)  # far from uniform, so every weight matters
    x = torch.randn(2, 3, 5)
    history = [torch.randn(2, 3, 5) for _ in range(6)]
    for n in (1, 3, 6):
        torch.testing.assert_close(layer(x, history[:n]), _matrix_reference(layer, x, history[:n]).float())
    assert layer(x, []) is x
    double = compat.MatrixMHCSkip(max_history=3, doubly_stochastic=doubly_stochastic).double()
    inputs = (torch.randn(2, 4, dtype=torch.float64, requires_grad=True),)
    states = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda x, *h: double(x, list(h)), inputs + tuple(states))
    loss = double(inputs[0], states).sum()
    loss.backward()
    assert double.mixing_logits.grad is not None and double.mixing_logits.grad.abs().sum() > 0


def test_matrix_skip_compiles_like_eager_and_checks_its_inputs():
    torch.manual_seed(0)
    layer = compat.MatrixMHCSkip(max_history=3)
    x, history = torch.randn(4, 8), [torch.randn(4, 8) for _ in range(3)]
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="mhc", fullgraph=True)
    torch.testing.assert_close(compiled(x, history), layer(x, history), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="share shape"):
        layer(x, [torch.randn(4, 8), torch.randn(4, 9)])
    with pytest.raises(RuntimeError, match="match the history shape"):
        layer(torch.randn(4, 9), history)
    with pytest.raises(TypeError, match="list of tensors"):
        layer(x, torch.stack(history))
    for bad in ({"max_history": 0}, {"iterations": 0}, {"max_history": 2.0}):
        with pytest.raises(ValueError):
            compat.MatrixMHCSkip(**bad)
    assert "doubly_stochastic=True" in repr(layer)
