"""`mhc.layers.matrix_skip`: `MatrixMHCSkip`, a learned K x K mixing matrix over the history window."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ... import projections
from ...ops import mix


class MatrixMHCSkip(nn.Module):
    """``y = x + sum_j W[K-1, j] * history[j]`` over the last ``K = min(len(history), max_history)``
    states (oldest first), ``W`` the bottom-right K x K block of the learned ``mixing_logits``,
    made doubly stochastic by ``iterations`` Sinkhorn normalisations (log domain), or row-softmaxed
    with ``doubly_stochastic=False``. The package mixes all K states into K outputs and keeps the
    last; only that row reaches the output, so it is all this layer computes (one `mix` call,
    fused by ``torch.compile(backend="mhc")``).

    As in the package, ``mixing_logits`` start at small random values (``0.01 * randn``): unlike
    `mhc_fx.MHCSkip`, this layer is not the identity at init. All states and ``x`` must share one
    shape; an empty history returns ``x``."""

    def __init__(self, max_history: int = 4, doubly_stochastic: bool = True, iterations: int = 10) -> None:
        super().__init__()
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be an int >= 1, got {max_history!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
        self.max_history = max_history
        self.doubly_stochastic = bool(doubly_stochastic)
        self.iterations = iterations
        self.mixing_logits = nn.Parameter(torch.randn(max_history, max_history) * 0.01)

    def weights(self, k: int) -> Tensor:
        """The K x K mixing matrix for a window of ``k`` states."""
        logits = self.mixing_logits[-k:, -k:]
        if self.doubly_stochastic:
            return projections.sinkhorn(logits, max_iter=self.iterations, tol=None)
        return projections.softmax(logits)

    def forward(self, x: Tensor, history: Sequence[Tensor]) -> Tensor:
        """``x`` plus the last row of the mixing matrix applied to the window."""
        if isinstance(history, Tensor):
            raise TypeError("MatrixMHCSkip: history must be a list of tensors (oldest first), not a tensor")
        window = list(history)[-self.max_history :]
        if not window:
            return x
        shapes = {tuple(s.shape) for s in window}
        if len(shapes) != 1:
            raise RuntimeError(f"MatrixMHCSkip requires all history states to share shape; got {sorted(shapes)}")
        if tuple(x.shape) not in shapes:
            raise RuntimeError(
                f"MatrixMHCSkip expects x to match the history shape; got x={tuple(x.shape)}, history={shapes.pop()}"
            )
        return mix(x, window, self.weights(len(window))[-1].to(x.dtype))

    def extra_repr(self) -> str:
        return (
            f"max_history={self.max_history}, doubly_stochastic={self.doubly_stochastic}, iterations={self.iterations}"
        )
