"""Seed-compatible layers: `MHCSkip` and `MHCSequential`, built on `mix` and the projections.

These are the explicit API of the `mhc` package, without its defects: history is
a plain list that lives only inside one forward call (nothing leaks between
batches, nothing to move with ``.to()``), gradients reach every layer by default
(``detach_history=False``), the weights never leave the device (no host sync, so
``torch.compile`` sees one graph), and checkpointing passes the history as
explicit inputs (correct gradients).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import MHCConfig
from .projections import mixing_weights

# Options of the `mhc` package that mhc_fx deliberately does not carry, and why.
_SEED_ONLY = {
    "init": "the init is fixed: exactly the identity (mhc/residual), latest-biased (hc)",
    "use_gating": "a global gate breaks the exact identity at init; not supported",
    "prune_threshold": "pruning weights needs a host sync per weight (a graph break); not supported",
    "clear_history_each_forward": "history never outlives one forward call, so there is nothing to clear",
    "history_scope": "history always lives in the scope of one forward call",
}


def _reject_seed_only(owner: str, kwargs: dict) -> None:
    for name in kwargs:
        reason = _SEED_ONLY.get(name)
        if reason is not None:
            raise TypeError(
                f"{owner}: argument {name!r} of the mhc package is not supported: {reason} "
                f"(mhc_fx.compat.{owner} takes the package's options)"
            )
        raise TypeError(f"{owner}: unexpected keyword argument {name!r}")


class _Resample(nn.Module):
    """Maps an older state onto the branch's shape: optional average pooling, then a linear map."""

    def __init__(self, source: torch.Size, target: torch.Size) -> None:
        super().__init__()
        self.pool: nn.Module = nn.Identity()
        if len(source) == 4 and len(target) == 4 and source[0] == target[0]:
            (sh, sw), (th, tw) = source[2:], target[2:]
            if sh % th or sw % tw or sh // th != sw // tw:
                raise ValueError(f"auto_project: cannot map spatial size {(sh, sw)} onto {(th, tw)}")
            if sh != th:
                self.pool = nn.AvgPool2d(sh // th)
            self.map: nn.Module = nn.Conv2d(source[1], target[1], kernel_size=1, bias=False)
        elif source[:-1] == target[:-1]:
            self.map = nn.Linear(source[-1], target[-1], bias=False)
        else:
            raise ValueError(
                f"auto_project: can map a state of shape {tuple(source)} onto {tuple(target)} only when "
                "the leading dims match (linear map of the last dim) or both are NCHW (1x1 conv, integer pooling)"
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.map(self.pool(x))


def _shape_key(shape: torch.Size) -> str:
    return "x".join(str(d) for d in shape[1:]) or "scalar"


class MHCSkip(nn.Module):
    """One residual site: ``y = x + sum_k alpha_k * history[k]`` over the last H states.

    Args (keyword-only):
        max_history: H, the most states mixed (the window is the last ``min(len, H)``).
        mode: ``"residual"``, ``"hc"`` or ``"mhc"`` (see `MHCConfig`).
        constraint, epsilon, temperature, stochastic, detach_history, auto_project:
            see `MHCConfig`. With ``auto_project``, a state of another shape is mapped
            by a learned projection created at its first use (build the optimizer
            after one forward pass, as with ``nn.Lazy*`` modules).

    ``forward(x, history)``: ``x`` is the branch output f(x_l); ``history`` the states
    oldest first, the latest stream ``x_l`` last. An empty history returns ``x``.
    """

    def __init__(
        self,
        *,
        max_history: int = 4,
        mode: str = "mhc",
        constraint: str = "simplex",
        epsilon: float = 0.05,
        detach_history: bool = False,
        auto_project: bool = False,
        stochastic: bool = False,
        temperature: float = 1.0,
        **seed_only,
    ) -> None:
        super().__init__()
        _reject_seed_only("MHCSkip", seed_only)
        self.config = MHCConfig(
            mode=mode,
            max_history=max_history,
            constraint=constraint,
            epsilon=epsilon,
            temperature=temperature,
            stochastic=stochastic,
            detach_history=detach_history,
            auto_project=auto_project,
        )
        mode = self.config.site_mode
        self.mixing_logits = nn.Parameter(mode.initial_logits(self.config, max_history)) if mode.learns else None
        self.projections = nn.ModuleDict()

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def max_history(self) -> int:
        return self.config.max_history

    def extra_repr(self) -> str:
        c = self.config
        return f"mode={c.mode!r}, max_history={c.max_history}, constraint={c.constraint!r}"

    def _to_branch_shape(self, state: Tensor, x: Tensor, k: int) -> Tensor:
        if state.shape == x.shape:
            return state
        if not self.config.auto_project:
            raise ValueError(
                f"MHCSkip: history[{k}] has shape {tuple(state.shape)} but x has {tuple(x.shape)}; "
                "pass auto_project=True to map older states through a learned projection"
            )
        key = f"{_shape_key(state.shape)}_to_{_shape_key(x.shape)}"
        if key not in self.projections:
            self.projections[key] = _Resample(state.shape, x.shape).to(device=x.device, dtype=x.dtype)
        return self.projections[key](state)

    def weights(self, k: int) -> Tensor:
        """alpha for a window of ``k`` states (the last ``k`` logits, projected)."""
        if self.mixing_logits is None:
            return torch.eye(k)[-1]
        return mixing_weights(self.mixing_logits[-k:], self.config, training=self.training)

    def forward(self, x: Tensor, history: Sequence[Tensor]) -> Tensor:
        if isinstance(history, Tensor):
            raise TypeError("MHCSkip: history must be a list of tensors (oldest first), not a tensor")
        window = list(history)[-self.config.max_history :]
        if not window:
            return x
        window = [self._to_branch_shape(s, x, k) for k, s in enumerate(window)]
        mode = self.config.site_mode
        if not mode.learns:
            return mode.site(x, window, None, self.config, None)
        if self.config.detach_history:
            window = [s.detach() for s in window[:-1]] + window[-1:]
        theta = self.mixing_logits[-len(window) :]
        return mode.site(x, window, theta, self.config, mode.draw_noise(theta, self.config, training=self.training))


class MHCSequential(nn.Module):
    """Drop-in for ``nn.Sequential`` with hyper-connections between its modules.

    Computes ``x_{l+1} = f_l(x_l) + sum_k alpha_{l,k} x_k`` over the last H states
    ``x_{l-K+1} .. x_l``. ``mode="residual"`` is the plain residual network and
    ``mode="mhc"`` equals it exactly at init. Options as in `MHCSkip`, plus
    ``use_checkpointing`` (non-reentrant activation checkpointing per block, the
    history passed as explicit inputs so gradients are exact).
    """

    def __init__(
        self,
        modules: Iterable[nn.Module],
        *,
        max_history: int = 4,
        mode: str = "mhc",
        constraint: str = "simplex",
        epsilon: float = 0.05,
        detach_history: bool = False,
        auto_project: bool = False,
        stochastic: bool = False,
        temperature: float = 1.0,
        use_checkpointing: bool = False,
        **seed_only,
    ) -> None:
        super().__init__()
        _reject_seed_only("MHCSequential", seed_only)
        if isinstance(modules, nn.Module) and not isinstance(modules, (nn.Sequential, nn.ModuleList)):
            raise TypeError("MHCSequential: modules must be an iterable of nn.Module, got a single module")
        modules = list(modules)
        for i, m in enumerate(modules):
            if not isinstance(m, nn.Module):
                raise TypeError(f"MHCSequential: modules[{i}] must be an nn.Module, got {type(m).__name__}")
        if not isinstance(use_checkpointing, bool):
            raise TypeError(f"use_checkpointing must be a bool, got {use_checkpointing!r}")
        options = dict(
            max_history=max_history,
            mode=mode,
            constraint=constraint,
            epsilon=epsilon,
            detach_history=detach_history,
            auto_project=auto_project,
            stochastic=stochastic,
            temperature=temperature,
        )
        self.wrapped_modules = nn.ModuleList(modules)
        self.skip_layers = nn.ModuleList(MHCSkip(**options) for _ in modules)
        self.use_checkpointing = use_checkpointing
        self.max_history = max_history

    def __len__(self) -> int:
        return len(self.wrapped_modules)

    def __iter__(self):
        return iter(self.wrapped_modules)

    def __getitem__(self, index):
        return self.wrapped_modules[index]

    def clear_history(self) -> None:
        """Kept for compatibility with the `mhc` package: a no-op, since history
        lives only inside one forward call and nothing survives it."""

    @staticmethod
    def _block(module: nn.Module, skip: MHCSkip, x: Tensor, *history: Tensor) -> Tensor:
        return skip(module(x), list(history))

    def forward(self, x: Tensor) -> Tensor:
        history = [x]
        for module, skip in zip(self.wrapped_modules, self.skip_layers):
            if self.use_checkpointing and torch.is_grad_enabled():
                x = checkpoint(self._block, module, skip, x, *history, use_reentrant=False)
            else:
                x = self._block(module, skip, x, *history)
            history = (history + [x])[-self.max_history :]
        return x
