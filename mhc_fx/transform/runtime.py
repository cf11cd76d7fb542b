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
from . import dtensor, projecting, replay

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
    # auto_project: (old shape, new shape) at analysis, batch dim included, of the states this site
    # maps onto its stream's shape; the map's weight is ``holder``'s ``attr + projecting.SUFFIX``
    projects: tuple[tuple, tuple] | None = None
    streams: bool = False  # the chain carries ``config.streams`` parallel streams (`stream_modes`)
    features: int | None = None  # the stream's last dim at analysis (None without shapes)
    suffixes: tuple[str, ...] = ()  # the name suffixes of its mode's parameters (`params.attach`)

    def parameters(self) -> dict[str, Tensor]:
        """This site's mode parameters by name suffix (see `modes.Mode.parameters`)."""
        return {suffix: self.holder._parameters[self.attr + suffix] for suffix in self.suffixes}


class CallScope:
    """The state of one call of a converted model: per-location occurrence counters and
    the window of each chain. It lives in the calling thread (`SiteRuntime.scope`), so
    threads calling one model at once each have their own."""

    def __init__(self, recomputing: bool = False) -> None:
        self.counters: dict = {}
        self.histories: dict = {}  # chain -> its window (the streams of its latest sites)
        self.heads: dict = {}  # chain -> the output of its latest site (re-viewed with the window)
        self.streams: dict = {}  # chain -> the n streams after its latest site (`stream_modes`)
        self.recomputing = recomputing  # a checkpointed region recomputed from its snapshot
        self.sequence_parallel: str | None = None  # a module SequenceParallel distributed (dtensor.py)

    def snapshot(self) -> tuple[dict, dict, dict, dict]:
        """(counters, histories, heads, streams) now, for replaying a block later."""
        histories = {chain: list(h) for chain, h in self.histories.items()}
        return dict(self.counters), histories, dict(self.heads), dict(self.streams)

    @classmethod
    def restored(cls, state: tuple[dict, dict, dict]) -> CallScope:
        """A private scope holding a `snapshot`, for a recompute."""
        scope = cls(recomputing=True)
        counters, histories, heads, streams = state
        scope.counters, scope.heads, scope.streams = dict(counters), dict(heads), dict(streams)
        scope.histories = {chain: list(h) for chain, h in histories.items()}
        return scope

    def reviewed(self, value: Any, result: Any, view) -> None:
        """``result = view(value)`` re-viewed the stream of a chain (``value`` is its latest site's
        output: a reshape, view, permute or transpose between two residual adds): view the chain's
        window the same way, so its next site mixes states of its own shape."""
        for chain, head in self.heads.items():
            if head is value:
                self.histories[chain] = [view(s) for s in self.histories.get(chain, ()) if s.shape == value.shape]
                self.heads[chain] = result
                self.streams.pop(chain, None)  # n streams cannot follow a re-view: the chain restarts


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
        # {(module path, call location): (function, its rewritten copy)}: the helper calls that lead
        # to a site (`calls.site_call`); during analysis, every followed call
        self.followed: dict[tuple, tuple] = {}
        self.report: Any = None
        self.inits: dict = {}  # a container root's parameter inits (`params.Init`), else on the store
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
        # Eager plain tensors only: compiled, exported or traced code (fx proxies, tensor subclasses)
        # leaves layouts to the compiler.
        plain = all(type(t) is torch.Tensor or isinstance(t, nn.Parameter) for t in (out, a, b))
        if plain and not torch.compiler.is_compiling():
            out = _with_layout_of_add(out, a, b, inplace)
        if a.shape == b.shape:  # (a broadcasting add is no site: `_mix_site`)
            scope.heads[site.chain] = out
        return out

    def _mix_site(self, scope: CallScope, site: SiteSpec, training: bool, a: Tensor, b: Tensor) -> Tensor:
        stream, branch = (a, b) if site.stream_first else (b, a)
        if stream.shape != branch.shape:
            # A broadcasting add taken for a site by an analysis without shapes (fx, no example
            # inputs): not a residual connection, and never an error where `a + b` is not.
            return a + b
        config = self.config
        if site.streams:
            return self._stream_site(scope, site, stream, branch, torch.promote_types(a.dtype, b.dtype))
        history = scope.histories.setdefault(site.chain, [])
        if site.projects is not None and site.holder is not None:
            _project_window(site, history, stream)
        history.append(stream)
        if len(history) > config.max_history:
            del history[0]
        if site.holder is None:
            return a + b
        window = _window(history[-site.window :], branch.shape)
        if len(window) < site.window and not torch.compiler.is_compiling() and replay.in_backward():
            raise RuntimeError(_recompute_message(site, len(window)))
        if len(window) == 1:
            return a + b  # the only state this call produced on the chain: alpha = [1]
        # The original `a + b` promotes mixed dtypes (autocast: a float32 stream plus a bfloat16
        # branch gives float32); the site reproduces exactly that promotion, nothing more.
        dtype = torch.promote_types(a.dtype, b.dtype)
        branch = branch.to(dtype)
        window = [s.to(dtype) for s in window]
        if config.detach_history:
            window = [s.detach() for s in window[:-1]] + window[-1:]
        theta = site.holder._parameters[site.attr]
        if len(window) < site.window:  # layers skipped in this call (LayerDrop): the latest logits
            theta = theta[-len(window) :]
        dtensor.check_plain_stream(site.name, scope.sequence_parallel, stream, theta)
        mode = config.site_mode
        noise = mode.draw_noise(theta, config, training=training)
        if config.check_finite:
            _check_finite(site.name, mode.weights(theta, config, noise), window)
        if dtensor.is_distributed(branch, window):
            return dtensor.site_mix(site.name, branch, window, theta, config, noise)
        return mode.site(branch, window, theta, config, noise)

    def _stream_site(self, scope: CallScope, site: SiteSpec, stream: Tensor, branch: Tensor, dtype) -> Tensor:
        """An n-stream site: ``X_i`` from the chain's ``X_{i-1}`` and the branch; returns the next
        block's read ``y_i``. The chain restarts from ``n`` copies of the stream (a view) at its
        first site and wherever the stream is not the previous site's output (a block run on its
        own, a re-view): identical copies make every stream map exact there."""
        config = self.config
        state = scope.streams.get(site.chain)
        if state is None or site.position == 1 or stream is not scope.heads.get(site.chain):
            s = stream.to(dtype)
            state = s.unsqueeze(-2).expand(*s.shape[:-1], config.streams, s.shape[-1])
        new, out = config.stream_mode.step(state, branch, site.parameters(), config)
        scope.streams[site.chain] = new
        return out


def _project_window(site: SiteSpec, history: list[Tensor], stream: Tensor) -> None:
    """Map the chain's states of the old shape onto ``stream``'s shape, in place in the history,
    so this site and the later ones mix states of one shape (`projecting`)."""
    weight = site.holder._parameters[site.attr + projecting.SUFFIX]
    channels = 1 if weight.dim() == 4 else -1
    history[:] = [
        projecting.project_state(s, weight, stream.shape)
        if s.shape != stream.shape and s.dim() == stream.dim() and s.shape[channels] == weight.shape[1]
        else s
        for s in history
    ]


def _window(states: list[Tensor], shape: torch.Size) -> list[Tensor]:
    """The latest states of ``shape``: the window is what this call produced on the chain, which
    can be fewer than the site's K (a layer skipped by LayerDrop, a stage boundary, a block called
    on its own) and stops at a state of another shape (the stream re-viewed where the analysis
    could not see it)."""
    k = len(states)
    while k > 0 and states[k - 1].shape == shape:
        k -= 1
    return states[k:]


def _recompute_message(site: SiteSpec, held: int) -> str:
    return (
        f"mhc_fx site {site.name!r} expected {site.window} history states but its chain holds {held}: a "
        "converted block was recomputed in backward without the states it saw. Reentrant activation "
        "checkpointing (use_reentrant=True, CheckpointImpl.REENTRANT) cannot replay them: use use_reentrant=False; "
        "nor can a block compiled on its own inside an eager checkpoint: apply checkpointing before torch.compile "
        "(docs/troubleshooting.md)"
    )


def _with_layout_of_add(out: Tensor, a: Tensor, b: Tensor, inplace: bool) -> Tensor:
    """``out`` in the memory layout that ``a + b`` (or ``a += b``) gives. The mixing
    result follows the branch's strides; when the operands' layouts differ (a branch
    that ends in a permute), later layout-sensitive ops (convolutions) would otherwise
    pick other algorithms and the model would stop being exact at init. Eager only:
    under torch.compile Inductor chooses layouts itself."""
    if a.shape != b.shape or (a.stride() == b.stride() and not inplace):
        return out  # a broadcasting add was computed as `a + b` itself
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


def site_view(module: nn.Module, value: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``value.<name>(*args, **kwargs)`` in a rewritten forward; when ``value`` is the output of a
    chain's latest site, the chain's window is re-viewed the same way (`CallScope.reviewed`)."""
    result = getattr(value, name)(*args, **kwargs)
    rt = runtime_of(module)
    scope = rt.scope if rt is not None else None
    if scope is not None and scope.heads and rt.tags is None and isinstance(value, Tensor):
        scope.reviewed(value, result, lambda state: getattr(state, name)(*args, **kwargs))
    return result


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
