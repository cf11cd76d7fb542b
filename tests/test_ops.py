"""The custom op ``torch.ops.mhc_fx.mix``: registration, gradients, numerics, compile, errors."""

from __future__ import annotations

import pytest
import torch

from mhc_fx import ops
from mhc_fx.ops import mix, mix_reference

F64 = torch.float64
B, T, C, K = 2, 3, 5, 3


def _states(shape, k=K, dtype=F64, requires_grad=True):
    branch = torch.randn(shape, dtype=dtype, requires_grad=requires_grad)
    history = [torch.randn(shape, dtype=dtype, requires_grad=requires_grad) for _ in range(k)]
    return branch, history


def _hand(branch, history, weights):
    """b + sum_k w[..., k] * s_k in float64, weights aligned with the states' leading dims."""
    out = branch.double()
    for k, s in enumerate(history):
        w = weights[..., k].double()
        out = out + w.reshape(w.shape + (1,) * (s.dim() - w.dim())) * s.double()
    return out


# weight shape for states of shape (B, T, C)
WEIGHT_SHAPES = {
    "per_site": (K,),
    "per_token": (B, T, K),
    "broadcast_batch": (1, T, K),
    "per_batch": (B, K),
}


@pytest.mark.parametrize("name", list(WEIGHT_SHAPES))
@pytest.mark.parametrize("weights_grad", [True, False])
def test_opcheck(name, weights_grad):
    branch, history = _states((B, T, C))
    weights = torch.randn(WEIGHT_SHAPES[name], dtype=F64, requires_grad=weights_grad)
    result = torch.library.opcheck(torch.ops.mhc_fx.mix.default, (branch, history, weights))
    assert result and all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_opcheck_low_precision_states_with_float32_weights(dtype):
    branch, history = _states((B, T, C), dtype=dtype)
    weights = torch.softmax(torch.randn(B, T, K), -1).requires_grad_()
    result = torch.library.opcheck(torch.ops.mhc_fx.mix.default, (branch, history, weights))
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("name", list(WEIGHT_SHAPES))
def test_gradcheck(name):
    branch, history = _states((B, T, C))
    weights = torch.randn(WEIGHT_SHAPES[name], dtype=F64, requires_grad=True)

    def fn(b, w, *h):
        return mix(b, list(h), w)

    assert torch.autograd.gradcheck(fn, (branch, weights, *history))


@pytest.mark.parametrize("shape", [(B, T, C), (C,), (B, C)])
def test_row_sums_first_weight_gradient_is_exact(monkeypatch, shape):
    # the GPU form of the weight gradient (row sums, then one reduction), forced on the CPU
    branch, history = _states(shape)
    weights = torch.randn(K, dtype=F64, requires_grad=True)

    def fn(b, w, *h):
        return mix(b, list(h), w)

    grad_out = torch.randn(shape, dtype=F64)
    (whole,) = torch.autograd.grad(fn(branch, weights, *history), weights, grad_out)
    monkeypatch.setattr(ops, "row_sums_first", lambda device: True)
    (rows,) = torch.autograd.grad(fn(branch, weights, *history), weights, grad_out)
    torch.testing.assert_close(rows, whole, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(fn, (branch, weights, *history))


def test_row_sums_first_only_off_the_cpu():
    assert not ops.row_sums_first(torch.device("cpu"))
    assert ops.row_sums_first(torch.device("cuda")) and ops.row_sums_first(torch.device("meta"))


@pytest.mark.parametrize("name", list(WEIGHT_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_and_hand_computation(name, dtype):
    branch, history = _states((B, T, C), dtype=dtype, requires_grad=False)
    weights = torch.randn(WEIGHT_SHAPES[name], dtype=dtype)
    out = mix(branch, history, weights)
    assert out.dtype == dtype and out.shape == branch.shape
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(out, mix_reference(branch, history, weights), atol=tol, rtol=0)
    torch.testing.assert_close(out.double(), _hand(branch, history, weights), atol=tol, rtol=0)
    assert torch.equal(torch.ops.mhc_fx.mix(branch, history, weights), out)


def test_output_is_a_fresh_tensor():
    branch, history = _states((4, 6), requires_grad=False)
    before = branch.clone()
    out = mix(branch, history, torch.tensor([0.2, 0.3, 0.5], dtype=F64))
    assert out.data_ptr() != branch.data_ptr()
    out.add_(1.0)
    assert torch.equal(branch, before)


def test_weights_of_another_float_dtype_are_accepted_and_get_their_dtype_back():
    branch, history = _states((4, 6), dtype=torch.float32)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=F64, requires_grad=True)
    out = mix(branch, history, weights)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert weights.grad.dtype == F64
    torch.testing.assert_close(
        weights.grad, torch.stack([s.detach().double().sum() for s in history]), rtol=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["per_site", "per_token"])
def test_half_states_accumulate_in_float32(dtype, name):
    k = 8
    shape = (B, T, 512)
    branch = torch.randn(shape).to(dtype)
    history = [(torch.randn(shape) * (1 + i)).to(dtype) for i in range(k)]
    lead = {"per_site": (), "per_token": (B, T)}[name]
    weights = torch.softmax(torch.randn(*lead, k), -1)  # float32 weights
    out = mix(branch, history, weights)
    assert out.dtype == dtype

    truth = _hand(branch, history, weights)  # float64
    rounded_once = truth.to(dtype)
    # float32 accumulation, one rounding at the end: equal to the correctly rounded
    # result except for rare double-rounding cases
    agree = (out == rounded_once).double().mean().item()
    assert agree >= 0.99, agree
    assert torch.equal(mix_reference(branch, history, weights), out) or (
        (mix_reference(branch, history, weights) == out).double().mean() >= 0.99
    )

    # naive accumulation in the half dtype is worse
    naive = branch.clone()
    for i, s in enumerate(history):
        w = weights[..., i].to(dtype)
        naive = naive + w.reshape(w.shape + (1,) * (s.dim() - w.dim())) * s
    err = (out.double() - truth).abs()
    naive_err = (naive.double() - truth).abs()
    assert err.mean() < naive_err.mean()
    assert (naive == rounded_once).double().mean() < agree
    # and never off by more than one unit in the last place of the half dtype
    ulp = torch.finfo(dtype).eps * truth.abs().clamp_min(torch.finfo(dtype).tiny)
    assert (err <= ulp * 1.0001).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_states_backward_dtypes(dtype):
    branch, history = _states((B, T, C), dtype=dtype)
    weights = torch.softmax(torch.randn(K), -1).requires_grad_()
    mix(branch, history, weights).float().sum().backward()
    assert branch.grad.dtype == dtype and all(s.grad.dtype == dtype for s in history)
    assert weights.grad.dtype == torch.float32
    expected = torch.stack([s.detach().double().sum() for s in history]).float()
    torch.testing.assert_close(weights.grad, expected, rtol=1e-5, atol=1e-4)
    for k, s in enumerate(history):
        torch.testing.assert_close(s.grad.float(), torch.full(s.shape, weights[k].item()).to(dtype).float())


# --------------------------------------------------------------------------- compile


def _mix_fn(b, h0, h1, h2, w):
    return torch.tanh(mix(b, [h0, h1, h2], w)) * 2 + 1


@pytest.mark.parametrize("name", ["per_site", "per_token"])
def test_compile_fullgraph_no_graph_break_and_matches_eager(name):
    torch._dynamo.reset()
    branch, history = _states((B, T, C), dtype=torch.float32)
    weights = torch.softmax(torch.randn(WEIGHT_SHAPES[name]), -1).requires_grad_()
    args = (branch, *history, weights)

    explanation = torch._dynamo.explain(_mix_fn)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()

    compiled = torch.compile(_mix_fn, fullgraph=True)
    out = compiled(*args)
    expected = _mix_fn(*args)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)

    grads = torch.autograd.grad(out.square().sum(), args)
    expected_grads = torch.autograd.grad(expected.square().sum(), args)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("entry", ["wrapper", "op"])
def test_errors(entry):
    call = mix if entry == "wrapper" else (lambda b, h, w: torch.ops.mhc_fx.mix(b, list(h), w))
    b = torch.randn(4, 6)
    h = [torch.randn(4, 6), torch.randn(4, 6)]
    w = torch.tensor([0.5, 0.5])

    with pytest.raises(ValueError, match="history"):
        call(b, [], torch.ones(0))
    with pytest.raises(ValueError, match=r"len\(history\) = 2"):
        call(b, h, torch.ones(3))
    with pytest.raises(ValueError, match=r"len\(history\) = 2"):
        call(b, h, torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"history\[1\].*shape"):
        call(b, [h[0], torch.randn(4, 7)], w)
    with pytest.raises(ValueError, match=r"history\[1\].*shape"):
        call(b, [h[0], torch.randn(6, 4)], w)
    with pytest.raises(TypeError, match=r"history\[1\].*dtype"):
        call(b, [h[0], torch.randn(4, 6, dtype=F64)], w)
    with pytest.raises(TypeError, match=r"history\[0\].*dtype"):
        call(b, [h[0].bfloat16(), h[1]], w)
    with pytest.raises(ValueError, match=r"history\[1\].*meta"):
        call(b, [h[0], torch.randn(4, 6, device="meta")], w)
    with pytest.raises(TypeError, match="weights"):
        call(b, h, torch.ones(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="branch"):
        call(torch.ones(4, 6, dtype=torch.int64), [torch.ones(4, 6, dtype=torch.int64)] * 2, w)
    with pytest.raises(ValueError, match="leading dims"):
        call(b, h, torch.ones(4, 6, 1, 2))


def test_wrapper_rejects_a_tensor_as_history():
    with pytest.raises(TypeError, match="history"):
        mix(torch.randn(3), torch.randn(2, 3), torch.ones(2))
    with pytest.raises(TypeError, match="history"):
        mix(torch.randn(3), [torch.randn(3), 1.0], torch.ones(2))
    with pytest.raises(TypeError, match="tensors"):
        mix(torch.randn(3), [torch.randn(3)], [1.0])


def test_no_silent_cast_under_compile():
    torch._dynamo.reset()
    fn = torch.compile(lambda b, s, w: mix(b, [s], w), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"history\[0\]"):
        fn(torch.randn(3), torch.randn(3, dtype=F64), torch.ones(1))
    torch._dynamo.reset()


# --------------------------------------------------------------------------- what the backward saves


def _saved_by_mix(weights_grad: bool, k: int = 4):
    branch, history = _states((3, 5), k=k)
    weights = torch.softmax(torch.randn(k, dtype=F64), -1).requires_grad_(weights_grad)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = mix(branch, history, weights)
    saved_history = [t for t in packed if any(t.data_ptr() == s.data_ptr() for s in history)]
    return out, branch, history, weights, packed, saved_history


def test_backward_saves_no_history_when_weights_need_no_grad():
    out, branch, history, weights, packed, saved_history = _saved_by_mix(weights_grad=False)
    assert saved_history == []
    assert len(packed) == 1 and torch.equal(packed[0], weights)
    out.sum().backward()  # and the backward still works without it
    assert all(torch.equal(s.grad, torch.full_like(s, weights[k].item())) for k, s in enumerate(history))
    assert torch.equal(branch.grad, torch.ones_like(branch))


def test_backward_saves_the_history_when_weights_need_grad():
    out, branch, history, weights, packed, saved_history = _saved_by_mix(weights_grad=True)
    assert len(saved_history) == len(history) == 4
    assert len(packed) == 1 + len(history)
    out.sum().backward()
    torch.testing.assert_close(weights.grad, torch.stack([s.detach().sum() for s in history]))


def test_accumulation_dtype():
    assert ops.accumulation_dtype(torch.bfloat16) == torch.float32
    assert ops.accumulation_dtype(torch.float16) == torch.float32
    assert ops.accumulation_dtype(torch.float32) == torch.float32
    assert ops.accumulation_dtype(F64) == F64
