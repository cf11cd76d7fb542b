"""A mode is one object: everything that differs between ``residual``, ``hc`` and ``mhc``.

Each mode owns its per-site parameters and their init, the weights it shows for inspection
(alpha = P(theta)), the site computation, and the transposed Jacobian the hand-written
backward of `site_mix` applies. The rest of the package asks ``config.site_mode`` (chosen
from the validated `MHCConfig`) instead of comparing mode names, so adding a mode means
adding one class here and registering it in `MODES`, plus its tests.

The math stays in `projections` (the projections) and `jacobians` (their J^T in closed
form); a mode composes them with the options of the config (temperature, floor, noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import jacobians
from .projections import (
    _compute_dtype,
    _gumbel_like,
    _gumbel_softmax_with,
    _temperature_like,
    project_floored_simplex,
    project_simplex,
    scaled_logits,
    softmax,
)

if TYPE_CHECKING:
    from .config import MHCConfig

#: Offset of the older logits below the latest one in ``hc`` mode at init
#: (divided by the temperature: softmax sees ``-HC_INIT_GAP`` for older states).
HC_INIT_GAP = 4.0

#: The name of a site's logits among its parameters (`Mode.parameters`).
LOGITS = ""


class Mode:
    """How a site mixes its window ``s_1 .. s_K`` (oldest first) with its branch ``b``:
    ``y = b + sum_k alpha_k s_k``, ``alpha = P(theta)``. Stateless: every method takes the
    validated config, so one instance serves every site and model."""

    #: The name users pass as ``mode=``.
    name: str = ""
    #: Whether a site has parameters that learn (False: a plain add, nothing to store).
    learns: bool = True

    def __repr__(self) -> str:
        return f"<mode {self.name!r}>"

    def validate(self, config: MHCConfig) -> None:
        """Refuse options that mean nothing in this mode (raises ValueError naming them)."""

    def floor(self, config: MHCConfig) -> float | None:
        """The floor on the latest weight, or None when there is none."""
        return None

    # -- parameters ------------------------------------------------------------------------------
    def initial_logits(self, config: MHCConfig, k: int) -> Tensor:
        """The logits a site of window ``k`` starts from (float32, shape ``[k]``)."""
        raise NotImplementedError

    def parameters(
        self, config: MHCConfig, window: int, position: int = 1, features: int | None = None
    ) -> dict[str, Tensor]:
        """The initial values of a site's parameters by name suffix (`LOGITS` for the logits);
        empty when the site has nothing to learn (K = 1, or a mode without weights). ``window``
        is the site's K, ``position`` its place in its chain (from 1), ``features`` the size of
        the stream's last dim (None when the analysis had no shapes)."""
        if not self.learns or window < 2:
            return {}
        return {LOGITS: self.initial_logits(config, window)}

    def reset_(
        self, config: MHCConfig, suffix: str, tensor: Tensor, window: int, position: int, features: int | None
    ) -> None:
        """Put one parameter made by `parameters` (for the same site) back to its init, in place."""
        with torch.no_grad():
            tensor.copy_(self.parameters(config, window, position, features)[suffix])

    # -- weights ---------------------------------------------------------------------------------
    def draw_noise(
        self, theta: Tensor, config: MHCConfig, *, training: bool, generator: torch.Generator | None = None
    ) -> Tensor | None:
        """The standard Gumbel noise a stochastic site draws in training (shaped like ``theta``,
        in its compute dtype), or None when the site is deterministic."""
        if not (config.stochastic and training) or not self.learns:
            return None
        return _gumbel_like(theta.detach().to(_compute_dtype(theta)), generator)

    def weights(self, theta: Tensor, config: MHCConfig, noise: Tensor | None = None) -> Tensor:
        """alpha for logits ``theta`` and the noise `draw_noise` gave (None: deterministic)."""
        raise NotImplementedError

    def transposed_jacobian(
        self, theta: Tensor, config: MHCConfig, noise: Tensor | None = None
    ) -> jacobians.TransposedJacobian:
        """``v -> J^T v`` for ``alpha = weights(theta, config, noise)``, theta of shape ``[K]``."""
        raise NotImplementedError

    # -- the site --------------------------------------------------------------------------------
    def site(
        self, branch: Tensor, window: Sequence[Tensor], theta: Tensor | None, config: MHCConfig, noise: Tensor | None
    ) -> Tensor:
        """The value of one site: ``b + sum_k alpha_k s_k`` (`site_mix`: the op, with the
        logits' gradient row by row under ``torch.compile``)."""
        from .site_mix import site_mix  # site_mix asks the mode for alpha and J^T

        return site_mix(branch, window, theta, config, noise)

    def describe(self, window: int) -> str:
        """What a site of window ``window`` (>= 2) computes, for `show_rewrite`."""
        return f"y = b + Σ α_k s_k over the chain's last {window} states"


class Residual(Mode):
    """The plain residual network: alpha = e_last, no parameters."""

    name = "residual"
    learns = False

    def validate(self, config: MHCConfig) -> None:
        if config.stochastic:
            raise ValueError("stochastic=True needs mode 'hc' or 'mhc'; mode 'residual' has no weights to sample")

    def initial_logits(self, config: MHCConfig, k: int) -> Tensor:
        return _identity_logits(config, k)

    def weights(self, theta: Tensor, config: MHCConfig, noise: Tensor | None = None) -> Tensor:
        alpha = torch.zeros_like(theta)
        alpha[..., -1] = 1.0
        return alpha

    def transposed_jacobian(self, theta, config, noise=None):
        _check_vector(theta)
        raise ValueError("mode 'residual' has constant weights: there is no Jacobian to take")

    def site(self, branch, window, theta, config, noise) -> Tensor:
        return branch + window[-1]

    def describe(self, window: int) -> str:
        return "y = s + b (residual mode)"


class HC(Mode):
    """Hyper-connections: alpha = softmax(theta / T) (Gumbel-softmax sample when stochastic),
    latest-biased at init."""

    name = "hc"

    def initial_logits(self, config: MHCConfig, k: int) -> Tensor:
        theta = torch.zeros(k, dtype=torch.float32)
        theta[:-1] = -HC_INIT_GAP * config.temperature
        return theta

    def weights(self, theta: Tensor, config: MHCConfig, noise: Tensor | None = None) -> Tensor:
        alpha = softmax(theta / config.temperature)
        if noise is None:
            return alpha
        return _gumbel_softmax_with(alpha.to(noise.dtype), noise, config.temperature).to(alpha.dtype)

    def transposed_jacobian(self, theta, config, noise=None):
        theta = _check_vector(theta).detach()
        alpha = softmax(theta / config.temperature)
        outer = jacobians.softmax_jt(alpha.to(_compute_dtype(theta)), config.temperature)
        if noise is None:
            return outer
        inner = jacobians.gumbel_softmax_jt(alpha.to(noise.dtype), noise, config.temperature)
        return lambda v: outer(inner(v))


class MHC(Mode):
    """Manifold-constrained: the exact Euclidean projection of theta / T onto the simplex
    (constraint ``identity``: with the latest weight at least epsilon); perturb-and-project
    when stochastic. Exactly the identity at init, with a live gradient (older logits on the tie)."""

    name = "mhc"

    def floor(self, config: MHCConfig) -> float | None:
        return config.epsilon if config.constraint == "identity" else None

    def initial_logits(self, config: MHCConfig, k: int) -> Tensor:
        return _identity_logits(config, k)

    def weights(self, theta: Tensor, config: MHCConfig, noise: Tensor | None = None) -> Tensor:
        scaled = scaled_logits(theta, config, noise)
        floor = self.floor(config)
        return project_simplex(scaled) if floor is None else project_floored_simplex(scaled, floor)

    def transposed_jacobian(self, theta, config, noise=None):
        theta = _check_vector(theta).detach()
        scaled = scaled_logits(theta, config, noise)
        t = scaled.to(_compute_dtype(scaled))
        floor = self.floor(config)
        project = jacobians.simplex_jt(t, 1.0) if floor is None else jacobians.floored_simplex_jt(t, floor)
        temperature = _temperature_like(theta, config)
        return lambda v: [g / temperature for g in project(v)]


def _identity_logits(config: MHCConfig, k: int) -> Tensor:
    """``temperature * e_last``: theta / T = e_last, projected exactly onto e_last with the
    older entries on the tie (a live gradient, DESIGN §1)."""
    theta = torch.zeros(k, dtype=torch.float32)
    theta[-1] = config.temperature
    return theta


def _check_vector(theta: Tensor) -> Tensor:
    if theta.dim() != 1:
        raise ValueError(f"theta must have shape [K], got {tuple(theta.shape)}")
    return theta


#: Every mode by the name users pass (the order is the order docs and the CLI list them in).
MODES: dict[str, Mode] = {m.name: m for m in (Residual(), HC(), MHC())}
