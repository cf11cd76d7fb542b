"""The math: mixing-weight projections as pure tensor functions.

Every function works over the last dimension, batches over the leading ones, and
computes in float32 for half-precision inputs (returning the input dtype).

The simplex projections are exact Euclidean projections (sparsemax: true zeros).
They are written as "find the support, then solve on it": the support is a
boolean mask (no gradient), and the weights are ``max(theta - tau, 0)`` on it with
``tau = (sum_S theta - r) / |S|``. Ties (entries with ``theta_k == tau``) count as
inside the support, so plain autograd through these functions gives the tie-aware
subgradient ``g_k - mean_S(g)`` on the support. That is what lets the identity
init ``theta = e_last`` (older entries exactly on the threshold) return
``alpha = e_last`` exactly *and* a non-zero gradient (DESIGN §1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .ops import gumbel_from_uniform, gumbel_noise

if TYPE_CHECKING:
    from .config import MHCConfig

_METHODS = ("auto", "sort", "pairwise")
#: Largest K for which ``method="auto"`` picks the sort-free O(K^2) form.
PAIRWISE_MAX_K = 16


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if not x.is_floating_point():
        raise TypeError(f"theta must be a floating-point tensor, got dtype {x.dtype}")
    return torch.float32 if x.element_size() < 4 else x.dtype


def _check_theta(theta: torch.Tensor) -> None:
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dim() == 0 or theta.shape[-1] == 0:
        raise ValueError(f"theta must have a non-empty last dimension, got shape {tuple(theta.shape)}")


def simplex_threshold(theta: torch.Tensor, support: torch.Tensor, radius) -> tuple[torch.Tensor, torch.Tensor]:
    """``(|S|, tau)`` of the projection onto the radius-``radius`` simplex with support ``S``
    (both keepdim over the last dimension): ``tau = (sum_S theta - r) / |S|``."""
    size = support.sum(-1, keepdim=True).to(theta.dtype)
    return size, (torch.where(support, theta, 0.0).sum(-1, keepdim=True) - radius) / size


def _weights_on_support(theta: torch.Tensor, support: torch.Tensor, radius) -> torch.Tensor:
    """Solve the projection on a known support: ``max(theta - tau, 0)`` inside, 0 outside."""
    _, tau = simplex_threshold(theta, support, radius)
    # clamp_min passes the gradient at exactly 0, so tied entries stay in the support.
    return torch.where(support, (theta - tau).clamp_min(0.0), 0.0)


def _support_pairwise(theta: torch.Tensor, radius) -> torch.Tensor:
    # k is in the support iff sum_j max(theta_j - theta_k, 0) <= r (ties included).
    t = theta.detach()
    excess = (t.unsqueeze(-2) - t.unsqueeze(-1)).clamp_min(0.0).sum(-1)
    return excess <= radius


def _support_sorted(theta: torch.Tensor, radius) -> torch.Tensor:
    # Sorted descending, the j-th entry is in the support iff cumsum_j - j * z_j <= r.
    t = theta.detach()
    z, order = torch.sort(t, dim=-1, descending=True)
    rank = torch.arange(1, t.shape[-1] + 1, device=t.device, dtype=t.dtype)
    inside_sorted = (z.cumsum(-1) - rank * z) <= radius
    count = inside_sorted.sum(-1, keepdim=True)
    inside_sorted = rank <= count  # the support is a prefix of the sorted order
    return torch.zeros_like(inside_sorted).scatter(-1, order, inside_sorted)


def _resolve_method(method: str, k: int) -> str:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "auto":
        return "pairwise" if k <= PAIRWISE_MAX_K else "sort"
    return method


def simplex_support(theta: torch.Tensor, radius, method: str = "auto") -> torch.Tensor:
    """The support of the projection of ``theta`` onto the radius-``radius`` simplex, as a
    boolean mask over the last dimension (entries on the threshold count as inside)."""
    method = _resolve_method(method, theta.shape[-1])
    return (_support_pairwise if method == "pairwise" else _support_sorted)(theta, radius)


def floored_radius(theta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``1 - epsilon`` as `project_floored_simplex` forms it (a tensor of theta's dtype)."""
    return torch.ones((), dtype=theta.dtype, device=theta.device) - epsilon


def _project_scaled_simplex(theta: torch.Tensor, radius, method: str) -> torch.Tensor:
    support = simplex_support(theta, radius, method)
    # A NaN or inf logit compares False everywhere and would leave an all-zero alpha;
    # adding 0 * sum(theta) (exactly 0 for finite logits) makes it propagate instead.
    return _weights_on_support(theta, support, radius) + 0.0 * theta.sum(-1, keepdim=True)


def project_simplex(theta: torch.Tensor, *, method: str = "auto") -> torch.Tensor:
    """Euclidean projection onto the probability simplex (sparsemax).

    Args:
        theta: logits, shape ``[..., K]``.
        method: ``"sort"`` (O(K log K)), ``"pairwise"`` (sort-free O(K^2), fuses into
            one kernel), or ``"auto"`` (pairwise for K <= 16). Both are exact.

    Returns:
        alpha with ``alpha >= 0``, ``alpha.sum(-1) == 1`` and exact zeros off the support.
    """
    _check_theta(theta)
    dtype = _compute_dtype(theta)
    return _project_scaled_simplex(theta.to(dtype), 1.0, method).to(theta.dtype)


def project_floored_simplex(theta: torch.Tensor, epsilon: float, *, method: str = "auto") -> torch.Tensor:
    """Exact Euclidean projection onto ``{alpha in simplex, alpha_last >= epsilon}``.

    With ``beta = alpha - epsilon * e_last`` this is the projection of
    ``theta - epsilon * e_last`` onto the simplex of radius ``1 - epsilon``.
    """
    _check_theta(theta)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be a number in [0, 1), got {epsilon!r}")
    dtype = _compute_dtype(theta)
    t = theta.to(dtype)
    older, last = t[..., :-1], t[..., -1:]
    # The radius and the shifted last logit are formed by the same float op, so that
    # theta = e_last sits exactly on the tie (exact identity, live gradient).
    radius = floored_radius(t, epsilon)
    beta = _project_scaled_simplex(torch.cat([older, last - epsilon], -1), radius, method)
    older_alpha = beta[..., :-1]
    # 1 - sum(older) is alpha_last in exact arithmetic and is exactly 1 at the identity.
    # clamp_min: on the bound, rounding could leave it a few ulps below epsilon (< 0 for eps 0).
    last_alpha = (1.0 - older_alpha.sum(-1, keepdim=True)).clamp_min(epsilon)
    return torch.cat([older_alpha, last_alpha], -1).to(theta.dtype)


def softmax(theta: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(theta / temperature)`` over the last dimension (the ``hc`` mode)."""
    _check_theta(theta)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.softmax(theta.to(_compute_dtype(theta)) / temperature, -1).to(theta.dtype)


def gumbel_softmax(
    probs: torch.Tensor,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    floor: float | None = None,
) -> torch.Tensor:
    """A relaxed sample around ``probs``: ``softmax((log probs + g) / temperature)``.

    ``g`` is standard Gumbel noise drawn from ``generator`` (or the global RNG).
    Exact zeros of ``probs`` stay (numerically) zero. With ``floor``, the sample is
    projected back onto ``{alpha_last >= floor}`` so the identity floor holds.
    """
    _check_theta(probs)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    p = probs.to(_compute_dtype(probs))
    sample = _gumbel_softmax_with(p, _gumbel_like(p, generator), temperature)
    if floor is not None:
        sample = project_floored_simplex(sample, floor)
    return sample.to(probs.dtype)


def _gumbel_softmax_with(p: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax((log p + gumbel) / temperature)`` for given noise (``p`` in its compute dtype)."""
    tiny = torch.finfo(p.dtype).tiny
    # Exact zeros get log = -inf (so they stay exactly zero at any temperature);
    # clamp_min keeps the unused log branch finite, so they get no (NaN) gradient.
    log_p = torch.where(p > 0, torch.log(p.clamp_min(tiny)), float("-inf"))
    return torch.softmax((log_p + gumbel) / temperature, -1)


def _gumbel_like(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard Gumbel noise shaped like ``t``: from ``generator``, or from the global RNG
    through the opaque ``gumbel_noise`` op (so eager and compiled draw the same samples)."""
    if generator is None:
        return gumbel_noise(t)
    return gumbel_from_uniform(torch.rand(t.shape, generator=generator, device=t.device, dtype=t.dtype))


def sinkhorn(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    max_iter: int = 50,
    tol: float | None = 1e-6,
) -> torch.Tensor:
    """Log-domain Sinkhorn onto doubly-stochastic matrices (last two dims, square).

    Alternates row and column normalisation of ``logits / temperature`` in log
    space, at most ``max_iter`` times, stopping once every row sum is within
    ``tol`` of 1. ``tol=None`` runs exactly ``max_iter`` iterations, which avoids
    the host sync of the convergence test (use it under ``torch.compile``).
    """
    _check_theta(logits)
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must be square in its last two dims, got shape {tuple(logits.shape)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 or None, got {tol!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    log_p = logits.to(_compute_dtype(logits)) / temperature
    for _ in range(max_iter):
        log_p = log_p - torch.logsumexp(log_p, -1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, -2, keepdim=True)
        if tol is not None and (log_p.exp().sum(-1) - 1).abs().max() <= tol:
            break
    return log_p.exp().to(logits.dtype)


def initial_logits(config: MHCConfig, k: int) -> torch.Tensor:
    """The logits a site of window ``k`` starts from (float32, shape ``[k]``; the config's mode
    decides, `modes.Mode.initial_logits`).

    ``mhc`` and ``residual``: ``temperature * e_last``, so the projection of
    ``theta / temperature = e_last`` is exactly ``e_last`` with the older entries on
    the tie (live gradient). ``hc``: the latest logit ``HC_INIT_GAP * temperature``
    above the others, close to the identity.
    """
    return config.site_mode.initial_logits(config, k)


def mixing_weights(
    theta: torch.Tensor,
    config: MHCConfig,
    *,
    training: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """alpha = P(theta) for a site configured by ``config`` (DESIGN §1 table).

    ``residual`` gives ``e_last`` whatever theta is. ``stochastic`` draws a
    sample in training only; eval returns P(theta). For ``hc`` the sample is the
    Gumbel-softmax around softmax(theta / T). For ``mhc`` the noise perturbs the logits
    before the projection (perturb-and-project): alpha = P((theta + g) / T), exactly
    on the constraint set, sparse, and with a gradient at the identity init. (A
    Gumbel-softmax around the sparse P(theta) would keep its exact zeros and saturate its
    one non-zero weight at the identity init: a zero gradient, so nothing would ever learn.)
    """
    return project_logits(theta, config, draw_noise(theta, config, training=training, generator=generator))


def draw_noise(
    theta: torch.Tensor, config: MHCConfig, *, training: bool, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """The standard Gumbel noise a stochastic site draws in training (shaped like ``theta``,
    in its compute dtype), or None when the site is deterministic."""
    return config.site_mode.draw_noise(theta, config, training=training, generator=generator)


def scaled_logits(theta: torch.Tensor, config: MHCConfig, noise: torch.Tensor | None) -> torch.Tensor:
    """What ``mhc`` projects: theta / T, plus noise / T when stochastic (theta's dtype).

    Divides by the temperature rounded as `initial_logits` stores it (float32), then cast
    to theta's dtype, so that logits made by `initial_logits` and cast to any float dtype
    (a model's ``.double()``, ``.bfloat16()``) give theta / T == e_last exactly: the exact
    identity with a live gradient (DESIGN §1). Made on theta's device: a CPU tensor copied
    over would be a blocking host-to-device copy per site and call, and would make the site
    uncapturable in a CUDA graph.
    """
    scaled = theta / _temperature_like(theta, config)
    if noise is not None:  # (theta + g) / T: the temperature also scales the noise
        scaled = scaled + (noise / config.temperature).to(scaled.dtype)
    return scaled


def _temperature_like(theta: torch.Tensor, config: MHCConfig) -> torch.Tensor:
    """The temperature as `scaled_logits` divides by it: float32, then theta's dtype and device."""
    return torch.full((), config.temperature, dtype=torch.float32, device=theta.device).to(theta.dtype)


def project_logits(theta: torch.Tensor, config: MHCConfig, noise: torch.Tensor | None = None) -> torch.Tensor:
    """alpha for logits ``theta`` and the noise `draw_noise` gave (None: deterministic);
    the config's mode computes it (`modes.Mode.weights`)."""
    return config.site_mode.weights(theta, config, noise)
