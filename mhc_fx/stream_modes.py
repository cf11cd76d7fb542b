"""n-stream hyper-connections as modes: DeepSeek's mHC (arXiv 2512.24880) and the original HC
(arXiv 2409.19606), ``convert(model, mode=..., streams=n)``.

A chain that carries n streams keeps their state ``X`` (shape ``[*lead, n, C]``, the stream's
shape with a stream dim before the last) in the call's scope; the user's code only ever sees
C-wide tensors. The rewriter owns only the addition ``y_i = a_i + b_i``, where the block has
already computed ``b_i = f_i(a_i)`` from what the previous site returned, so each site folds
the next block's read into its own result (single pass: every coefficient of site i comes from
``X_{i-1}``, as Megatron-core's single-pass state does):

    d      = (vec X_{i-1} . phi) / rms(vec X_{i-1})           token-dependent part, per token
    post_i = 2 sigmoid(theta_post + g_post d_post)            (hc: theta_post + g_post tanh d_post)
    res_i  = w_I I + w_S SK(theta_res + g_res d_res)          (hc: theta_res + g_res tanh d_res)
             (w_I, w_S) = P_simplex(theta_mix): always doubly stochastic
    read_i = P_simplex(theta_read + g_read d_read), per token (hc: theta_read + g_read tanh d_read)
    X_i    = res_i^T X_{i-1} + post_i (x) b_i                 X_0 = n copies of a_1 (a view)
    y_i    = read_i . X_i                                     what the next block (or the model) reads

``read_i`` is H_pre of block i + 1 in the paper's notation (of the chain's output after its last
site). At init: gates g = 0, ``theta_post = 0`` (hc: 1), ``theta_mix = (1, 0)`` on the simplex's
tie (hc: ``theta_res = I``), ``theta_read = e_{i mod n}`` (HC's Eq. 14 choice, which lets the
streams drift apart). Every coefficient is then exactly 0 or 1, so each stream computes
``1 * x + 0 * ... + 1 * b`` and the converted model equals the original bit for bit (finite
values). The first site of a chain has no ``res`` (mixing identical copies changes nothing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .modes import Mode
from .ops import accumulation_dtype
from .projections import project_simplex, sinkhorn

if TYPE_CHECKING:
    from .config import MHCConfig

#: Parameter name suffixes of a stream site (`Mode.parameters`).
READ, POST, RES, RES_MIX, PHI, GATE = "_read", "_post", "_res", "_res_mix", "_phi", "_gate"
_RMS_EPS = 1e-6


class StreamMode(Mode):
    """Shared by the n-stream modes: the parameters, the token-dependent part, the update."""

    #: Options of history mixing that mean nothing with streams (they must keep their defaults).
    _HISTORY_ONLY = ("constraint", "stochastic", "detach_history", "auto_project", "temperature", "check_finite")

    def validate(self, config: MHCConfig) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        for option in self._HISTORY_ONLY:
            default = defaults[option]
            if getattr(config, option) != default:
                raise ValueError(
                    f"{option}={getattr(config, option)!r} does not combine with streams={config.streams}: "
                    f"it applies to history mixing (streams=1); leave it at {default!r}"
                )

    # -- parameters ------------------------------------------------------------------------------
    def parameters(self, config: MHCConfig, window: int, position: int = 1, features: int | None = None):
        n = config.streams
        params = {READ: self._read_init(n, position), POST: self._post_init(n)}
        if window >= 2:  # not the chain's first site
            params.update(self._res_init(n))
        if features is not None:  # the token-dependent part needs C
            columns = 2 * n + (n * n if window >= 2 else 0)
            params[PHI] = torch.randn(n * features, columns) / math.sqrt(n * features)
            params[GATE] = torch.zeros(3)
        return params

    @staticmethod
    def _read_init(n: int, position: int) -> Tensor:
        read = torch.zeros(n)
        read[position % n] = 1.0
        return read

    # -- the site --------------------------------------------------------------------------------
    def step(self, state: Tensor, branch: Tensor, params: dict[str, Tensor], config: MHCConfig):
        """``(X_i, y_i)`` from ``X_{i-1}`` (``state``, ``[*lead, n, C]``) and the branch ``b_i``.
        Computed in float32 (float64 for float64 streams); ``X_i`` and ``y_i`` in ``state``'s dtype."""
        # Under autocast too: autocast would run the matmuls and einsums in half precision, which
        # would round the exact 1 * x of the init and the maps.
        with torch.autocast(device_type=state.device.type, enabled=False):
            return self._step(state, branch, params, config)

    def _step(self, state: Tensor, branch: Tensor, params: dict[str, Tensor], config: MHCConfig):
        dtype = state.dtype
        acc = accumulation_dtype(dtype)
        x = state.to(acc)
        n = x.shape[-2]
        dyn = self._token_part(x, params, acc)
        gate = params[GATE].to(acc) if dyn is not None else None
        read = self._read(params[READ].to(acc), None if dyn is None else gate[0] * self._squash(dyn[..., :n]))
        post = self._post(params[POST].to(acc), None if dyn is None else gate[1] * self._squash(dyn[..., n : 2 * n]))
        if RES in params:
            extra = None if dyn is None else gate[2] * self._squash(dyn[..., 2 * n :]).unflatten(-1, (n, n))
            x = self._mix_streams(x, params, extra, config, acc)
        new = (x + post.unsqueeze(-1) * branch.to(acc).unsqueeze(-2)).to(dtype)
        out = torch.einsum("...j,...jc->...c", read, new.to(acc)).to(dtype)
        return new, out

    @staticmethod
    def _token_part(x: Tensor, params: dict[str, Tensor], acc: torch.dtype) -> Tensor | None:
        phi = params.get(PHI)
        if phi is None:
            return None
        flat = x.flatten(-2)
        inv_rms = torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + _RMS_EPS)
        return (flat @ phi.to(acc)) * inv_rms

    def _squash(self, d: Tensor) -> Tensor:
        return d

    def _read(self, theta: Tensor, extra: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _post(self, theta: Tensor, extra: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _mix_streams(self, x, params, extra, config, acc) -> Tensor:
        raise NotImplementedError

    def describe(self, window: int) -> str:
        res = "H_resᵀX" if window >= 2 else "X"
        return f"X = {res} + H_post⊗b over n {self.name} streams; y = H_pre·X (the next block's read)"

    def weights(self, theta, config, noise=None):
        raise TypeError("a stream site has several maps: use `static_maps`")

    def static_maps(self, params: dict[str, Tensor], config: MHCConfig) -> dict[str, Tensor]:
        """The static parts of a site's maps (the token-dependent part left out): ``pre`` (the
        next block's read, ``[n]``), ``post`` (``[n]``) and ``res`` (``[n, n]``, the identity at a
        chain's first site)."""
        n = config.streams
        acc = accumulation_dtype(params[READ].dtype)
        res = self._mix_streams(torch.eye(n, dtype=acc), params, None, config, acc) if RES in params else None
        return {
            "pre": self._read(params[READ].to(acc), None),
            "post": self._post(params[POST].to(acc), None),
            "res": torch.eye(n, dtype=acc) if res is None else res.mT,
        }


class StreamMHC(StreamMode):
    """DeepSeek's mHC: H_res doubly stochastic (the identity and a Sinkhorn-Knopp matrix mixed
    by simplex weights), H_post = 2 sigmoid, H_pre on the simplex per token."""

    name = "mhc"

    @staticmethod
    def _res_init(n: int) -> dict[str, Tensor]:
        return {RES: torch.zeros(n, n), RES_MIX: torch.tensor([1.0, 0.0])}

    @staticmethod
    def _post_init(n: int) -> Tensor:
        return torch.zeros(n)

    def _read(self, theta, extra):
        return project_simplex(theta if extra is None else theta + extra)

    def _post(self, theta, extra):
        return 2.0 * torch.sigmoid(theta if extra is None else theta + extra)

    def _mix_streams(self, x, params, extra, config, acc):
        logits = params[RES].to(acc)
        ds = sinkhorn(logits if extra is None else logits + extra, max_iter=config.sinkhorn_iters, tol=None)
        w = project_simplex(params[RES_MIX].to(acc))
        # w_I x + w_S (S^T x): with w = (1, 0) exactly x (no rounding through a matmul with I)
        return w[0] * x + w[1] * torch.einsum("...kj,...kc->...jc", ds, x)


class StreamHC(StreamMode):
    """The original hyper-connections: free H_res, H_pre and H_post, tanh token-dependent part."""

    name = "hc"

    @staticmethod
    def _res_init(n: int) -> dict[str, Tensor]:
        return {RES: torch.eye(n)}

    @staticmethod
    def _post_init(n: int) -> Tensor:
        return torch.ones(n)

    def _squash(self, d):
        return torch.tanh(d)

    def _read(self, theta, extra):
        return theta if extra is None else theta + extra

    def _post(self, theta, extra):
        return theta if extra is None else theta + extra

    def _mix_streams(self, x, params, extra, config, acc):
        res = params[RES].to(acc)
        return torch.einsum("...kj,...kc->...jc", res if extra is None else res + extra, x)


STREAM_MODES: dict[str, StreamMode] = {m.name: m for m in (StreamHC(), StreamMHC())}


def for_options(mode: str, streams: int) -> StreamMode | None:
    """The n-stream mode for ``mode=..., streams=...``; None for ``streams == 1``."""
    if streams == 1:
        return None
    if mode not in STREAM_MODES:
        raise ValueError(f"streams={streams} needs mode 'hc' or 'mhc', got mode {mode!r}")
    return STREAM_MODES[mode]
