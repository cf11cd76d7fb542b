"""One site: ``mix(branch, history, P(theta))`` with the logits' gradient taken row by row.

Eager, this is exactly the op and the projection composed: autograd differentiates the
projection after mix's backward has summed ``g * s_k`` over every element. Under
``torch.compile``, when the logits need a gradient, it is an autograd function with the
same forward whose backward applies the projection's transposed Jacobian
(`jacobians.transposed_jacobian`) to the row sums before the final reduction:

    d L / d theta = sum over rows of J^T [r_0 .. r_{K-1}],   r_k = sum over the last dim of g * s_k

equal by linearity, but now the site's whole backward is reductions over the states and
pointwise work Inductor fuses into its neighbours: on a GPU the weight gradient costs the
two launches of one split reduction and nothing after it (otherwise a pointwise kernel
applies J^T to the K sums), and besides the states only the logits are saved for it
(docs/backend.md). Eager and ``torch.export`` keep the composition: it launches fewer small
ops, and strict export would inline the function's forward without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .config import MHCConfig
from .ops import accumulation_dtype, mix, summed_products, weight_of


class _ProjectedMix(torch.autograd.Function):
    """``mix(branch, history, project_logits(theta, config, noise))`` with the backward above."""

    @staticmethod
    def forward(ctx, config: MHCConfig, theta: Tensor, noise: Tensor | None, branch: Tensor, *history: Tensor):
        ctx.config = config
        ctx.save_for_backward(theta, noise, *history)
        return mix(branch, history, config.site_mode.weights(theta, config, noise))

    @staticmethod
    def backward(ctx, grad: Tensor):
        theta, noise, *history = ctx.saved_tensors
        acc = accumulation_dtype(grad.dtype)
        grad_acc = grad.to(acc)
        mode = ctx.config.site_mode
        alpha = mode.weights(theta, ctx.config, noise)
        grad_history = [
            (weight_of(alpha, k, grad.dim(), acc) * grad_acc).to(grad.dtype) if ctx.needs_input_grad[4 + k] else None
            for k in range(len(history))
        ]
        grad_theta = None
        if ctx.needs_input_grad[1]:
            states = [s.to(acc) for s in history]
            grad_theta = summed_products(grad_acc, states, mode.transposed_jacobian(theta, ctx.config, noise))
            grad_theta = grad_theta.to(theta.dtype)
        return (None, grad_theta, None, grad, *grad_history)


def site_mix(
    branch: Tensor, history: Sequence[Tensor], theta: Tensor, config: MHCConfig, noise: Tensor | None = None
) -> Tensor:
    """``mix(branch, history, alpha)``, alpha the config's mode's weights: the value of one site.

    Args:
        branch: the branch output.
        history: the K states of the site's window, oldest first.
        theta: the site's logits, shape ``[K]``.
        config: the site's configuration (mode, constraint, temperature).
        noise: the Gumbel noise `projections.draw_noise` drew (stochastic training), or None.
    """
    mode = config.site_mode
    if (
        mode.learns
        and torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()  # strict export would inline the forward without grad
        and torch.is_grad_enabled()
        and theta.requires_grad
        and theta.dim() == 1
    ):
        # With dynamic=True Dynamo turns float attributes into graph inputs where they are first
        # used. First used inside the function's subgraph, they cannot be lifted into a later
        # site's subgraph (torch 2.13: "lift_tracked_freevar_to_input should not be called on
        # root SubgraphTracer"); used here first, they are inputs of the root graph.
        _ = config.temperature + config.epsilon
        return _ProjectedMix.apply(config, theta, noise, branch, *history)
    return mix(branch, history, mode.weights(theta, config, noise))
