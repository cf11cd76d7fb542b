"""The custom ops: ``torch.ops.mhc_fx.mix(branch, history, weights)`` (and a Gumbel-noise helper).

    mix(b, [s_0 .. s_{K-1}], w) = b + sum_k w[..., k] * s_k

``weights`` is ``[K]`` (one weight per state: a site's alpha) or ``[..., K]``
(per-token weights, broadcast over the leading dims of the states). States and
branch must share shape, dtype and device: nothing is cast silently. Half and
bfloat16 states are accumulated in float32 and the result rounded once.

The op has a fake kernel (for compile and export), a CPU/CUDA kernel, and a
registered autograd formula that saves only the weights and, when the weights
need a gradient, the history. `mix_reference` is the same math in plain torch
ops; the backend hands it to Inductor as the op's decomposition so it fuses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype mixing accumulates in: float32 for 16-bit floats, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_inputs(branch: Tensor, history: Sequence[Tensor], weights: Tensor) -> None:
    if not branch.is_floating_point():
        raise TypeError(f"mix: branch must be a floating-point tensor, got dtype {branch.dtype}")
    if len(history) == 0:
        raise ValueError("mix: history must hold at least one state, got an empty list")
    if not weights.is_floating_point():
        raise TypeError(f"mix: weights must be a floating-point tensor, got dtype {weights.dtype}")
    if weights.dim() == 0 or weights.shape[-1] != len(history):
        raise ValueError(
            f"mix: weights must have shape [K] or [..., K] with K = len(history) = {len(history)}, "
            f"got shape {tuple(weights.shape)}"
        )
    if weights.dim() - 1 > branch.dim():
        raise ValueError(
            f"mix: weights of shape {tuple(weights.shape)} have more leading dims than the states "
            f"of shape {tuple(branch.shape)}"
        )
    lead = weights.shape[:-1]
    if any(w != 1 and w != b for w, b in zip(lead, branch.shape)):
        raise ValueError(
            f"mix: weights of shape {tuple(weights.shape)} do not broadcast over the leading dims of the states "
            f"{tuple(branch.shape[: len(lead)])} (weights[..., k] lines up with the states' first dims)"
        )
    for k, state in enumerate(history):
        if state.dtype != branch.dtype:
            raise TypeError(
                f"mix: history[{k}] has dtype {state.dtype} but branch has {branch.dtype}; "
                "states are never cast silently, convert them first"
            )
        if state.device != branch.device:
            raise ValueError(f"mix: history[{k}] is on {state.device} but branch is on {branch.device}")
        if state.shape != branch.shape:
            raise ValueError(f"mix: history[{k}] has shape {tuple(state.shape)} but branch has {tuple(branch.shape)}")
    if weights.device != branch.device and weights.dim() > 0:
        raise ValueError(f"mix: weights are on {weights.device} but branch is on {branch.device}")


def weight_of(weights: Tensor, k: int, state_dim: int, dtype: torch.dtype) -> Tensor:
    """``weights[..., k]`` in ``dtype``, shaped to broadcast against a state of rank ``state_dim``."""
    w = weights[..., k].to(dtype)
    return w.reshape(w.shape + (1,) * (state_dim - w.dim()))


def mix_reference(branch: Tensor, history: Sequence[Tensor], weights: Tensor) -> Tensor:
    """The op's math in plain torch ops (also its decomposition for Inductor)."""
    acc = accumulation_dtype(branch.dtype)
    out = branch.to(acc)
    for k, state in enumerate(history):
        out = out + weight_of(weights, k, state.dim(), acc) * state.to(acc)
    return out.to(branch.dtype)


@torch.library.custom_op("mhc_fx::mix", mutates_args=(), device_types=None)
def _mix_op(branch: Tensor, history: list[Tensor], weights: Tensor) -> Tensor:
    _check_inputs(branch, history, weights)
    acc = accumulation_dtype(branch.dtype)
    out = branch.to(acc, copy=True)
    for k, state in enumerate(history):
        out.addcmul_(state, weight_of(weights, k, state.dim(), acc))
    return out.to(branch.dtype)


@_mix_op.register_fake
def _mix_fake(branch: Tensor, history: list[Tensor], weights: Tensor) -> Tensor:
    _check_inputs(branch, history, weights)
    return torch.empty_like(branch)


def _setup_context(ctx, inputs, output) -> None:
    branch, history, weights = inputs
    ctx.num_states = len(history)
    ctx.state_dtype = branch.dtype
    ctx.weights_need_grad = weights.requires_grad
    # The history is needed only for the weight gradient.
    ctx.save_for_backward(weights, *(history if weights.requires_grad else ()))


def _weight_grad(grad: Tensor, state: Tensor, weights: Tensor, acc: torch.dtype) -> Tensor:
    """d/dw_k of sum(grad * w_k * s_k), reduced to the shape of ``weights[..., k]``."""
    product = grad.to(acc) * state.to(acc)
    lead = weights.dim() - 1
    product = product.sum(dim=tuple(range(lead, product.dim()))) if product.dim() > lead else product
    return product.sum_to_size(weights.shape[:-1]) if lead else product


def _backward(ctx, grad: Tensor):
    weights, *history = ctx.saved_tensors
    acc = accumulation_dtype(ctx.state_dtype)
    grad_acc = grad.to(acc)
    grad_history = [
        (weight_of(weights, k, grad.dim(), acc) * grad_acc).to(ctx.state_dtype) for k in range(ctx.num_states)
    ]
    grad_weights = None
    if ctx.weights_need_grad and weights.dim() == 1:
        grad_weights = summed_products(grad_acc, [state.to(acc) for state in history]).to(weights.dtype)
    elif ctx.weights_need_grad:
        grads = [_weight_grad(grad, state, weights, acc) for state in history]
        grad_weights = torch.stack(grads, -1).to(weights.dtype)
    return grad, grad_history, grad_weights


def row_sums_first(device: torch.device) -> bool:
    """Whether `summed_products` takes row sums first: on GPUs, where Inductor fuses the
    row sums into kernels that already walk those rows (a LayerNorm's backward) and
    finishes all K sums in one reduction (about 3 backward launches per site instead of
    5); not on the CPU, whose C++ backend fuses the whole-tensor sums better (a 4-layer
    GPT's backward: 31 launches, 45 with row sums first)."""
    return device.type != "cpu"


def summed_products(grad: Tensor, states: Sequence[Tensor], linear_map=None) -> Tensor:
    """``[sum(grad * s) for s in states]`` as one ``[K]`` tensor (the gradient of one weight
    per state), with ``linear_map`` (K tensors to K tensors, linear) applied to the K sums.

    With `row_sums_first`, the sums are taken over the last dim first, ``linear_map`` is
    applied row by row, and one reduction over the rows finishes all K: the same values in
    another order (by linearity), and on a GPU nothing is left to launch after that
    reduction."""
    if grad.dim() >= 1 and row_sums_first(grad.device):
        rows = [(grad * state).sum(-1) for state in states]
        rows = linear_map(rows) if linear_map is not None else rows
        return torch.stack(rows, -1).reshape(-1, len(states)).sum(0)
    sums = [(grad * state).sum() for state in states]
    return torch.stack(linear_map(sums) if linear_map is not None else sums)


_mix_op.register_autograd(_backward, setup_context=_setup_context)


def gumbel_from_uniform(uniform: Tensor) -> Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` from uniform samples (clamped away from 0 and 1)."""
    info = torch.finfo(uniform.dtype)
    return -torch.log(-torch.log(uniform.clamp(info.tiny, 1.0 - info.eps)))


@torch.library.custom_op("mhc_fx::gumbel_noise", mutates_args=())
def _gumbel_noise(like: Tensor) -> Tensor:
    # Opaque on purpose: under torch.compile it still draws from the global
    # generator, so stochastic mixing gives the same samples compiled and eager.
    return gumbel_from_uniform(torch.rand_like(like))


@_gumbel_noise.register_fake
def _gumbel_noise_fake(like: Tensor) -> Tensor:
    return torch.empty_like(like)


def gumbel_noise(like: Tensor) -> Tensor:
    """Standard Gumbel noise shaped like ``like``, drawn from the global generator
    (the same draws in eager and compiled code)."""
    return torch.ops.mhc_fx.gumbel_noise(like.detach())


#: The registered op overload, ``torch.ops.mhc_fx.mix.default``.
mix_op = torch.ops.mhc_fx.mix.default


def mix(branch: Tensor, history: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``branch + sum_k weights[..., k] * history[k]`` through the registered op.

    Args:
        branch: the branch output ``b``, any shape, floating dtype.
        history: K states of the same shape, dtype and device as ``branch``,
            oldest first (the latest stream last).
        weights: ``[K]`` or ``[..., K]`` (broadcast over the states' leading dims).
    """
    if not isinstance(branch, Tensor) or not isinstance(weights, Tensor):
        raise TypeError("mix: branch and weights must be tensors")
    if isinstance(history, Tensor) or not all(isinstance(s, Tensor) for s in history):
        raise TypeError("mix: history must be a list or tuple of tensors")
    return torch.ops.mhc_fx.mix(branch, list(history), weights)
