"""What rewritten forwards call at run time: the per-call scope and the site add.

A converted model holds one `SiteRuntime`, shared by its root and every rewritten
module. The outermost rewritten forward opens a *scope* (`CallScope`) for one call:
per-location occurrence counters and one history list per chain. The scope lives on
a stack of the calling thread, so threads calling one model at once each have their
own; it is popped when the call returns (also on error), so no state survives between
calls; under ``torch.compile`` the history lists are plain graph values. A checkpointed
block recomputed in backward gets back the scope it saw (`replay`).

Every rewritten addition calls `site_add(module, loc, a, b)`. The key
``(module path, loc, occurrence)`` of the addition is counted the same way while
the graph is captured for analysis (then it emits a tagged add) and when the
model runs (then it looks the key up among the sites): the two cannot disagree.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Any

import torch
from torch import Tensor, nn
from torch._prims_common import compute_elementwise_output_strides

from ..config import MHCConfig
from ..projections import draw_noise, project_logits
from ..site_mix import site_mix
from . import dtensor, replay

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


class CallScope:
    """The state of one call of a converted model: per-location occurrence counters and
    the window of each chain. It lives in the calling thread (`SiteRuntime.scope`), so
    threads calling one model at once each have their own."""

    def __init__(self, counters: dict | None = None, histories: dict | None = None, recomputing: bool = False):
        self.counters = counters if counters is not None else {}
        self.histories = histories if histories is not None else {}
        self.recomputing = recomputing  # a checkpointed region recomputed from its snapshot
        self.sequence_parallel: str | None = None  # a module SequenceParallel distributed (dtensor.py)

    def snapshot(self) -> tuple[dict, dict]:
        """(counters, histories) now, for replaying a block later."""
        return dict(self.counters), {chain: list(h) for chain, h in self.histories.items()}

    @classmethod
    def restored(cls, state: tuple[dict, dict]) -> CallScope:
        """A private scope holding a `snapshot`, for a recompute."""
        counters, histories = state
        return cls(dict(counters), {chain: list(h) for chain, h in histories.items()}, recomputing=True)


class _ThreadScopes(threading.local):
    def __init__(self) -> None:  # runs once in every thread that uses it
        # The open calls of this thread, innermost last (a list, not an attribute that is
        # rebound: Dynamo replays mutations of the list but drops stores to a thread-local's
        # attributes made in compiled code, torch 2.13).
        self.stack: list[CallScope] = []


#: Tokens `SiteRuntime.open` returns: the forward joined its caller's scope, or pushed a new one.
_NESTED, _PUSHED = "nested", "pushed"


class SiteRuntime:
    """The state shared by the rewritten forwards of one converted model: the sites and
    their specs. The state of a call is a `CallScope` of the calling thread."""

    def __init__(self, config: MHCConfig) -> None:
        self.config = config
        self.sites: dict[SiteKey, SiteSpec] = {}
        self.tags: list[SiteKey] | None = None  # a list while capturing for analysis
        self.inplace_tags: set[int] = set()  # tags of `x += y` additions
        self.report: Any = None
        self._threads = _ThreadScopes()

    def __deepcopy__(self, memo) -> SiteRuntime:
        new = SiteRuntime.__new__(SiteRuntime)
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k != "_threads"}
        new.__dict__.update(copy.deepcopy(state, memo))
        new._threads = _ThreadScopes()
        return new

    def __reduce_ex__(self, protocol):
        raise TypeError(
            "mhc_fx: a converted model cannot be pickled whole (torch.save(model)): its forwards are generated "
            "functions. Save model.state_dict() (or save_pretrained), then convert the original model again and "
            "load_state_dict (or mhc_fx.from_pretrained)"
        )

    # -- scope ---------------------------------------------------------------
    @property
    def scope(self) -> CallScope | None:
        """The open call of the calling thread (None outside a call)."""
        stack = self._threads.stack
        return stack[-1] if stack else None

    def open(self) -> str:
        """Enter a rewritten forward: join the thread's open call, or open a new one.
        Returns the token `close` takes."""
        stack = self._threads.stack
        compiling = torch.compiler.is_compiling()
        if stack and (compiling or stack[-1].recomputing or not replay.in_backward()):
            if not compiling:
                replay.remember(self, stack[-1])
            return _NESTED
        # A new call; or, inside autograd's backward, a checkpointed region recomputed: the
        # snapshot its forward left restores the scope it saw (`replay`; eager only).
        state = None if compiling else replay.recall(self)
        stack.append(CallScope.restored(state) if state is not None else CallScope())
        return _PUSHED

    def close(self, token: str) -> None:
        if token == _PUSHED:
            self._threads.stack.pop()

    # -- additions ------------------------------------------------------------
    def next_key(self, scope: CallScope, path: str, loc: int) -> SiteKey:
        counters = scope.counters
        n = counters.get((path, loc), 0)
        counters[(path, loc)] = n + 1
        return (path, loc, n)

    def add(
        self, scope: CallScope, module: nn.Module, key: SiteKey, a: Tensor, b: Tensor, inplace: bool = False
    ) -> Tensor:
        if self.tags is not None:
            self.tags.append(key)
            if inplace:
                self.inplace_tags.add(len(self.tags) - 1)
            return torch.ops.mhc_fx.tag_add(a, b, len(self.tags) - 1)
        site = self.sites.get(key)
        if site is None:
            return a + b
        out = self._mix_site(scope, site, module.training, a, b)
        if torch.compiler.is_compiling() or not all(
            type(t) is torch.Tensor or isinstance(t, nn.Parameter) for t in (out, a, b)
        ):
            return out  # compiled, exported or traced (fx proxies, tensor subclasses): layouts are not ours to fix
        return _with_layout_of_add(out, a, b, inplace)

    def _mix_site(self, scope: CallScope, site: SiteSpec, training: bool, a: Tensor, b: Tensor) -> Tensor:
        stream, branch = (a, b) if site.stream_first else (b, a)
        config = self.config
        history = scope.histories.setdefault(site.chain, [])
        history.append(stream)
        if len(history) > config.max_history:
            del history[0]
        if site.holder is None:
            return a + b
        window = history[-site.window :]
        if len(window) != site.window:
            raise RuntimeError(_short_window_message(site, len(window)))
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
        dtensor.check_plain_stream(site.name, scope.sequence_parallel, stream, theta)
        noise = draw_noise(theta, config, training=training)
        if config.check_finite:
            _check_finite(site.name, project_logits(theta, config, noise), window)
        if dtensor.is_distributed(branch, window):
            return dtensor.site_mix(site.name, branch, window, theta, config, noise)
        return site_mix(branch, window, theta, config, noise)


def _short_window_message(site: SiteSpec, held: int) -> str:
    head = f"mhc_fx site {site.name!r} expected {site.window} history states but its chain holds {held}"
    if replay.in_backward():
        return (
            f"{head}: a converted block was recomputed in backward without the states it saw. Reentrant "
            "activation checkpointing (use_reentrant=True, CheckpointImpl.REENTRANT) cannot replay them: use "
            "use_reentrant=False; nor can a block compiled on its own inside an eager checkpoint: apply "
            "checkpointing before torch.compile (docs/troubleshooting.md)"
        )
    return (
        f"{head}: this call took a path through the model that differs from the one analysed at convert "
        "time: a block called on its own, or a model split into pipeline stages after convert (convert "
        "each stage instead; docs/troubleshooting.md)"
    )


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
    scope = rt.scope if rt is not None else None
    if scope is None or not (_is_tensor_like(a) and _is_tensor_like(b)):
        return a + b
    return rt.add(scope, module, rt.next_key(scope, module.__dict__["_mhc_fx_path"], loc), a, b)


def site_iadd(module: nn.Module, loc: int, a: Any, b: Any) -> Any:
    """``a += b`` at rewritten location ``loc``: in place unless the addition is a site."""
    rt = runtime_of(module)
    scope = rt.scope if rt is not None else None
    if scope is None or not (_is_tensor_like(a) and _is_tensor_like(b)):
        a += b
        return a
    key = rt.next_key(scope, module.__dict__["_mhc_fx_path"], loc)
    if rt.tags is None and key not in rt.sites:
        a += b
        return a
    return rt.add(scope, module, key, a, b, inplace=True)


_NO_RUNTIME = "no runtime"


def enter_scope(module: nn.Module) -> Any:
    """The prologue of a rewritten forward: joins or opens the call's scope."""
    rt = runtime_of(module)
    if rt is None:
        return _NO_RUNTIME
    token = rt.open()
    if token == _PUSHED and not torch.compiler.is_compiling():  # a new call: look for sequence parallel
        rt.scope.sequence_parallel = dtensor.sequence_parallel_module(module)
    return token


def exit_scope(module: nn.Module, token: Any) -> None:
    if token is not _NO_RUNTIME:
        runtime_of(module).close(token)


def scoped_forward(self, *args, **kwargs):
    """The forward of a module whose source is not rewritten: opens the scope around the class forward."""
    token = enter_scope(self)
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        exit_scope(self, token)
