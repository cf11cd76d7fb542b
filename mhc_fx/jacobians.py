"""The site projections' transposed Jacobians in closed form, applied to K tensors at once.

For ``alpha = project_logits(theta, config, noise)`` (``theta`` of shape ``[K]``),
`transposed_jacobian` returns the linear map ``v -> J^T v``, where ``v`` is a list of K
tensors of any shapes that broadcast together (the k-th holds component k, element by
element). It is the subgradient autograd takes through `projections.project_logits`:
entries on the sparsemax threshold count as inside the support, ``clamp_min`` passes the
gradient at the bound, exact zeros of a Gumbel-softmax get none (tests/test_jacobians.py
compares the two in every mode).

Why: a site's logit gradient is ``J^T (sum over elements of g * s_k)_k``. Applied to the row
sums before the final reduction over the rows (the same value, J^T being linear), the whole
weight gradient becomes reductions and pointwise work Inductor fuses into kernels that already
walk the states, with nothing left to launch after them (`mhc_fx.site_mix`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .projections import _gumbel_softmax_with, _weights_on_support, floored_radius, simplex_support, simplex_threshold

if TYPE_CHECKING:
    from .config import MHCConfig

#: ``v -> J^T v`` over K component tensors.
TransposedJacobian = Callable[[list[Tensor]], list[Tensor]]


def simplex_jt(t: Tensor, radius) -> TransposedJacobian:
    """J^T of the projection onto the radius-``radius`` simplex at ``t`` (``[K]``)."""
    support = simplex_support(t, radius)
    size, tau = simplex_threshold(t, support, radius)
    size = size.squeeze(-1)
    passes = support & (t - tau >= 0)  # where the clamp at 0 passes the gradient

    def apply(v: list[Tensor]) -> list[Tensor]:
        passed = [torch.where(passes[k], vk, 0.0) for k, vk in enumerate(v)]
        mean = sum(passed) / size  # the gradient through tau, shared by the support
        return [p - torch.where(support[k], mean, 0.0) for k, p in enumerate(passed)]

    return apply


def floored_simplex_jt(t: Tensor, epsilon: float) -> TransposedJacobian:
    """J^T of `project_floored_simplex` at ``t``: beta = P_{1-eps}(t - eps e_last),
    alpha = (beta_older, max(1 - sum beta_older, eps))."""
    radius = floored_radius(t, epsilon)
    shifted = torch.cat([t[:-1], t[-1:] - epsilon])
    beta = _weights_on_support(shifted, simplex_support(shifted, radius), radius)
    last_passes = (1.0 - beta[:-1].sum()) >= epsilon
    inner = simplex_jt(shifted, radius)

    def apply(v: list[Tensor]) -> list[Tensor]:
        through_last = torch.where(last_passes, v[-1], 0.0)
        return inner([vk - through_last for vk in v[:-1]] + [torch.zeros_like(v[-1])])

    return apply


def softmax_jt(probs: Tensor, scale) -> TransposedJacobian:
    """J^T of ``probs = softmax(x / scale)`` (with respect to x)."""

    def apply(v: list[Tensor]) -> list[Tensor]:
        mean = sum(probs[k] * vk for k, vk in enumerate(v))
        return [probs[k] * (vk - mean) / scale for k, vk in enumerate(v)]

    return apply


def gumbel_softmax_jt(p: Tensor, noise: Tensor, temperature: float) -> TransposedJacobian:
    """J^T of ``softmax((log p + noise) / T)`` with respect to p (exact zeros of p get none)."""
    tiny = torch.finfo(p.dtype).tiny
    sample = softmax_jt(_gumbel_softmax_with(p, noise, temperature), temperature)
    live = (p > 0) & (p >= tiny)  # where log's and clamp_min's gradients pass
    clamped = p.clamp_min(tiny)

    def apply(v: list[Tensor]) -> list[Tensor]:
        return [torch.where(live[k], gk / clamped[k], 0.0) for k, gk in enumerate(sample(v))]

    return apply


def transposed_jacobian(theta: Tensor, config: MHCConfig, noise: Tensor | None = None) -> TransposedJacobian:
    """``v -> J^T v`` for ``alpha = project_logits(theta, config, noise)``, theta of shape ``[K]``.

    The returned function maps K component tensors (the cotangent of alpha, element by
    element) to K tensors (the cotangent of theta). Composed by the config's mode
    (`modes.Mode.transposed_jacobian`); ``residual`` has no logits to differentiate and is refused.
    """
    return config.site_mode.transposed_jacobian(theta, config, noise)
