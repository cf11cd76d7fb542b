"""`mhc.layers.mhc_skip`: `MHCSkip` with the package's positional signature and options, on
mhc_fx's `MHCSkip` (the same projections and the same `mix` op)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ... import nn as fx_nn
from ...ops import mix
from ...projections import mixing_weights
from .._warn import warn_once
from ..config import INITS, resolve_default

DETACH_MESSAGE = (
    "detach_history=True detaches the older states only; the latest stream keeps its gradient "
    "(the package detached every state, so the skip path carried no gradient at all)"
)


def check_detach(value, stacklevel: int = 4) -> bool:
    """``value`` as the package's ``detach_history``; warns once when it is True, whose meaning differs."""
    if not isinstance(value, bool):
        raise TypeError(f"detach_history must be a bool, got {value!r}")
    if value:
        warn_once("detach_history", DETACH_MESSAGE, stacklevel=stacklevel)
    return value


def resolve_detach(value) -> bool:
    """A layer's ``detach_history``: the default config's when None (silently: that default is the
    package's), else checked and warned about as `check_detach` does."""
    if value is None:
        return resolve_default(None, "detach_history")
    return check_detach(value, stacklevel=5)


class MHCSkip(fx_nn.MHCSkip):
    """One residual site, ``y = x + sum_k alpha_k * history[k]``, with the `mhc` package's
    signature: positional ``mode, max_history, constraint, epsilon, temperature, init,
    auto_project, use_gating, prune_threshold, stochastic``. Options left at None come from the
    default config (`mhc_fx.compat.get_default_config`) at construction, as in the package.

    The math is mhc_fx's `MHCSkip` (docs/migrating.md §3): ``mode="mhc"`` projects onto the
    simplex exactly (the projection the package's docs describe; its code used a softmax), and
    ``init="identity"`` starts at exactly ``y = x + history[-1]``. The package's own options:

    - ``init="uniform"``: zero logits, so every window starts with equal weights.
    - ``use_gating``: ``y = x + sigmoid(gate_logit) * sum_k alpha_k history[k]``, ``gate_logit``
      starting at 2.0 (so the model is not the residual network at init).
    - ``prune_threshold``: weights below it count as zero. The package skipped them in a Python
      loop (a host sync per weight); here a mask gives the same numbers on the device.

    ``detach_history`` (keyword only, an mhc_fx option) detaches the older states only. In
    residual mode there are no mixing parameters, and gating and pruning do not apply."""

    def __init__(
        self,
        mode: str | None = None,
        max_history: int | None = None,
        constraint: str | None = None,
        epsilon: float | None = None,
        temperature: float | None = None,
        init: str | None = None,
        auto_project: bool | None = None,
        use_gating: bool = False,
        prune_threshold: float = 0.0,
        stochastic: bool = False,
        *,
        detach_history: bool = False,
    ) -> None:
        init = resolve_default(init, "init")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(use_gating, bool):
            raise TypeError(f"use_gating must be a bool, got {use_gating!r}")
        if isinstance(prune_threshold, bool) or not isinstance(prune_threshold, (int, float)):
            raise TypeError(f"prune_threshold must be a real number in [0, 1], got {prune_threshold!r}")
        if not 0.0 <= prune_threshold <= 1.0:
            raise ValueError(f"prune_threshold must be in [0, 1] (lower weights count as 0), got {prune_threshold}")
        super().__init__(
            mode=resolve_default(mode, "mode"),
            max_history=resolve_default(max_history, "max_history"),
            constraint=resolve_default(constraint, "constraint"),
            epsilon=resolve_default(epsilon, "epsilon"),
            temperature=resolve_default(temperature, "temperature"),
            auto_project=resolve_default(auto_project, "auto_project"),
            stochastic=stochastic,
            detach_history=detach_history,
        )
        self.init = init
        self.use_gating = use_gating
        self.prune_threshold = float(prune_threshold)
        if self.mixing_logits is not None and init == "uniform":
            with torch.no_grad():
                self.mixing_logits.zero_()  # equal logits: equal weights over any window
        if use_gating:
            self.gate_logit = nn.Parameter(torch.tensor(2.0))

    # The package kept these as plain attributes; here they live in the frozen, checked config.
    def _option(name: str, settable: bool = True) -> property:
        def get(self):
            return getattr(self.config, name)

        def set_(self, value) -> None:
            self.config = dataclasses.replace(self.config, **{name: value})  # checked again

        doc = f"``config.{name}``" + ("; setting it replaces the config (checked)" if settable else " (fixed)")
        return property(get, set_ if settable else None, doc=doc)

    constraint = _option("constraint")
    epsilon = _option("epsilon")
    temperature = _option("temperature")
    stochastic = _option("stochastic")
    auto_project = _option("auto_project", settable=False)  # projections are built for it
    del _option

    def forward(self, x: Tensor, history: Sequence[Tensor]) -> Tensor:
        """``x + sum_k alpha_k history[k]`` over the last ``max_history`` states (oldest first)."""
        if self.mixing_logits is None or not (self.use_gating or self.prune_threshold > 0):
            return super().forward(x, history)
        if isinstance(history, Tensor):
            raise TypeError("MHCSkip: history must be a list of tensors (oldest first), not a tensor")
        window = list(history)[-self.max_history :]
        if not window:
            return x
        window = [self._to_branch_shape(s, x, k) for k, s in enumerate(window)]
        if self.config.detach_history:
            window = [s.detach() for s in window[:-1]] + window[-1:]
        alpha = mixing_weights(self.mixing_logits[-len(window) :], self.config, training=self.training)
        if self.prune_threshold > 0:
            alpha = torch.where(alpha < self.prune_threshold, torch.zeros_like(alpha), alpha)
        if self.use_gating:
            alpha = alpha * torch.sigmoid(self.gate_logit)
        return mix(x, window, alpha.to(x.dtype))

    def extra_repr(self) -> str:
        extra = f", init={self.init!r}" if self.init != "identity" else ""
        extra += ", use_gating=True" if self.use_gating else ""
        extra += f", prune_threshold={self.prune_threshold}" if self.prune_threshold else ""
        return super().extra_repr() + extra
