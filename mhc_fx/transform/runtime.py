"""What rewritten forwards call at run time: the per-call scope and the site add.

A converted model holds one `SiteRuntime`, shared by its root and every rewritten
module. The outermost rewritten forward opens a *scope* for one call: per-location
occurrence counters and one history list per chain. The scope is reset when the
call starts and when it returns (also on error), so no state survives between
calls; under ``torch.compile`` the history lists are plain graph values.

Every rewritten addition calls `site_add(module, loc, a, b)`. The key
``(module path, loc, occurrence)`` of the addition is counted the same way while
the graph is captured for analysis (then it emits a tagged add) and when the
model runs (then it looks the key up among the sites): the two cannot disagree.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import Tensor, nn
from torch._prims_common import compute_elementwise_output_strides

from ..config import MHCConfig
from ..projections import draw_noise, project_logits
from ..site_mix import site_mix

SiteKey = tuple  # (module path, location in the forward, occurrence in the call)


@dataclasses.dataclass
class SiteSpec:
    """One converted addition and where its weights live."""

    name: str
    key: SiteKey
    owner: str
    chain: int
    position: int  # 1-based position in the chain
    window: int  # K = min(position, H)
    stream_first: bool  # the stream is the left operand
    holder: nn.Module | None = None  # module holding the logits (None when K == 1 or residual)
    attr: str = ""


class SiteRuntime:
    """The state shared by the rewritten forwards of one converted model."""

    def __init__(self, config: MHCConfig) -> None:
        self.config = config
        self.sites: dict[SiteKey, SiteSpec] = {}
        self.tags: list[SiteKey] | None = None  # a list while capturing for analysis
        self.inplace_tags: set[int] = set()  # tags of `x += y` additions
        self.report: Any = None
        self.depth = 0
        self.counters: dict = {}
        self.histories: dict = {}

    def __deepcopy__(self, memo) -> SiteRuntime:
        new = SiteRuntime.__new__(SiteRuntime)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __reduce_ex__(self, protocol):
        raise TypeError(
            "mhc_fx: a converted model cannot be pickled whole (torch.save(model)): its forwards are generated "
            "functions. Save model.state_dict() (or save_pretrained), then convert the original model again and "
            "load_state_dict (or mhc_fx.from_pretrained)"
        )

    # -- scope ---------------------------------------------------------------
    def open(self) -> None:
        if self.depth == 0:
            self.counters = {}
            self.histories = {}
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        if self.depth <= 0:
            self.depth = 0
            self.counters = {}
            self.histories = {}

    def snapshot(self) -> tuple[dict, dict]:
        """The scope's state (counters, histories) now, for replaying a block later."""
        return dict(self.counters), {chain: list(h) for chain, h in self.histories.items()}

    def restore(self, state: tuple[dict, dict]) -> None:
        counters, histories = state
        self.counters = dict(counters)
        self.histories = {chain: list(h) for chain, h in histories.items()}

    # -- additions ------------------------------------------------------------
    def next_key(self, path: str, loc: int) -> SiteKey:
        n = self.counters.get((path, loc), 0)
        self.counters[(path, loc)] = n + 1
        return (path, loc, n)

    def add(self, module: nn.Module, key: SiteKey, a: Tensor, b: Tensor, inplace: bool = False) -> Tensor:
        if self.tags is not None:
            self.tags.append(key)
            if inplace:
                self.inplace_tags.add(len(self.tags) - 1)
            return torch.ops.mhc_fx.tag_add(a, b, len(self.tags) - 1)
        site = self.sites.get(key)
        if site is None:
            return a + b
        out = self._mix_site(site, module.training, a, b)
        if torch.compiler.is_compiling() or not all(
            type(t) is torch.Tensor or isinstance(t, nn.Parameter) for t in (out, a, b)
        ):
            return out  # compiled, exported or traced (fx proxies, tensor subclasses): layouts are not ours to fix
        return _with_layout_of_add(out, a, b, inplace)

    def _mix_site(self, site: SiteSpec, training: bool, a: Tensor, b: Tensor) -> Tensor:
        stream, branch = (a, b) if site.stream_first else (b, a)
        config = self.config
        history = self.histories.setdefault(site.chain, [])
        history.append(stream)
        if len(history) > config.max_history:
            del history[0]
        if site.holder is None:
            return a + b
        window = history[-site.window :]
        if len(window) != site.window:
            raise RuntimeError(
                f"mhc_fx site {site.name!r} expected {site.window} history states but its chain holds "
                f"{len(window)}: this call took a path through the model that differs from the one analysed "
                "at convert time"
            )
        for k, state in enumerate(window):
            if state.shape != branch.shape:
                raise RuntimeError(
                    f"mhc_fx site {site.name!r}: history state {k} has shape {tuple(state.shape)} but the "
                    f"branch has {tuple(branch.shape)}"
                )
        # The original `a + b` promotes mixed dtypes (autocast: a float32 stream plus a bfloat16
        # branch gives float32); the site reproduces exactly that promotion, nothing more.
        dtype = torch.promote_types(a.dtype, b.dtype)
        branch = branch.to(dtype)
        window = [s.to(dtype) for s in window]
        if config.detach_history:
            window = [s.detach() for s in window[:-1]] + window[-1:]
        theta = site.holder._parameters[site.attr]
        noise = draw_noise(theta, config, training=training)
        if config.check_finite:
            _check_finite(site.name, project_logits(theta, config, noise), window)
        return site_mix(branch, window, theta, config, noise)


def _with_layout_of_add(out: Tensor, a: Tensor, b: Tensor, inplace: bool) -> Tensor:
    """``out`` in the memory layout that ``a + b`` (or ``a += b``) gives. The mixing
    result follows the branch's strides; when the operands' layouts differ (a branch
    that ends in a permute), later layout-sensitive ops (convolutions) would otherwise
    pick other algorithms and the model would stop being exact at init. Eager only:
    under torch.compile Inductor chooses layouts itself."""
    if a.stride() == b.stride() and not inplace:
        return out
    strides = tuple(a.stride()) if inplace else tuple(compute_elementwise_output_strides(a, b))
    if tuple(out.stride()) == strides:
        return out
    return torch.empty_strided(out.shape, strides, dtype=out.dtype, device=out.device).copy_(out)


def _check_finite(name: str, alpha: Tensor, window: list[Tensor]) -> None:
    if not bool(torch.isfinite(alpha).all()):
        raise FloatingPointError(f"mhc_fx site {name!r}: non-finite mixing weights {alpha.tolist()}")
    for k, state in enumerate(window):
        if not bool(torch.isfinite(state).all()):
            raise FloatingPointError(f"mhc_fx site {name!r}: history state {k} (of {len(window)}) is not finite")


def _is_tensor_like(x: Any) -> bool:
    return isinstance(x, (Tensor, torch.fx.Proxy))


def runtime_of(module: nn.Module) -> SiteRuntime | None:
    """The runtime a rewritten module belongs to (None for any other module)."""
    return module.__dict__.get("_mhc_fx_runtime")


def site_add(module: nn.Module, loc: int, a: Any, b: Any) -> Any:
    """``a + b`` at rewritten location ``loc`` of ``module``'s forward."""
    rt = runtime_of(module)
    if rt is None or rt.depth == 0 or not (_is_tensor_like(a) and _is_tensor_like(b)):
        return a + b
    return rt.add(module, rt.next_key(module.__dict__["_mhc_fx_path"], loc), a, b)


def site_iadd(module: nn.Module, loc: int, a: Any, b: Any) -> Any:
    """``a += b`` at rewritten location ``loc``: in place unless the addition is a site."""
    rt = runtime_of(module)
    if rt is None or rt.depth == 0 or not (_is_tensor_like(a) and _is_tensor_like(b)):
        a += b
        return a
    key = rt.next_key(module.__dict__["_mhc_fx_path"], loc)
    if rt.tags is None and key not in rt.sites:
        a += b
        return a
    return rt.add(module, key, a, b, inplace=True)


def enter_scope(module: nn.Module) -> bool:
    rt = runtime_of(module)
    if rt is None:
        return False
    rt.open()
    return True


def exit_scope(module: nn.Module, token: bool) -> None:
    if token:
        runtime_of(module).close()


def scoped_forward(self, *args, **kwargs):
    """The forward of a module whose source is not rewritten: opens the scope around the class forward."""
    token = enter_scope(self)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        exit_scope(self, token)
