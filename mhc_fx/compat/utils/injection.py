"""`mhc.utils.injection`: `inject_mhc`, `inject_mhc_default` and the `InjectedMHC` wrapper, with
the package's meaning: each target module ``m`` becomes ``m(x) + sum_k alpha_k h_k`` over a
history of states, which *adds* skip connections the model did not have.

That is not what `mhc_fx.inject_mhc` does (it turns the model's own residual adds into sites and
keeps the model's function; warned once). History lives inside one call of the model (or of the
wrapper, called alone): the buffers are emptied when the outermost call returns, so nothing leaks
into the next batch (docs/migrating.md §3.4).
"""

from __future__ import annotations

from torch import Tensor, nn

from .._warn import warn_once
from ..config import HISTORY_SCOPES, resolve_default
from ..layers.history_buffer import HistoryBuffer
from ..layers.mhc_skip import MHCSkip, check_detach

DEFAULT_TARGETS = (nn.Linear, nn.Conv2d, nn.LayerNorm)


class _CallScope:
    """Empties its buffers when the outermost of the calls it brackets returns."""

    def __init__(self, buffers: list[HistoryBuffer]) -> None:
        self.buffers = buffers
        self.depth = 0

    def enter(self, *_) -> None:
        self.depth += 1

    def exit(self, *_) -> None:
        self.depth -= 1
        if self.depth <= 0:
            self.depth = 0
            for buffer in self.buffers:
                buffer.clear()


class InjectedMHC(nn.Module):
    """``base_module`` followed by an `MHCSkip` (``skip``, built from ``mhc_kwargs``) over the
    states in ``history_buffer``, as in the package: when the buffer is empty, or holds states of
    another shape, it restarts from the input ``x`` (when ``x`` has the output's shape; otherwise
    the output passes unchanged and starts the history); the mixed output is appended.

    ``history_buffer`` may be shared by several wrappers (`inject_mhc` with
    ``history_scope="global"``). It is emptied when the outermost call returns."""

    def __init__(self, base_module: nn.Module, history_buffer: HistoryBuffer, **mhc_kwargs) -> None:
        super().__init__()
        if not isinstance(base_module, nn.Module):
            raise TypeError(f"base_module must be an nn.Module, got {type(base_module).__name__}")
        if not isinstance(history_buffer, HistoryBuffer):
            raise TypeError(f"history_buffer must be a HistoryBuffer, got {type(history_buffer).__name__}")
        self.base_module = base_module
        self.history_buffer = history_buffer
        self.skip = MHCSkip(**mhc_kwargs)
        self._scope = _CallScope([history_buffer])  # `inject_mhc` puts its model-wide scope here

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        """``base_module(x, ...)`` mixed with the history (see the class docstring)."""
        self._scope.enter()
        try:
            return self._forward(x, *args, **kwargs)
        finally:
            self._scope.exit()

    def _forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        out = self.base_module(x, *args, **kwargs)
        if not isinstance(out, Tensor):
            return out  # nothing to mix into (a tuple, a model output)
        history = self.history_buffer.get()
        if any(h.shape != out.shape for h in history):
            self.history_buffer.clear()  # a new shape starts a new history
            history = []
        if not history:
            if not isinstance(x, Tensor) or x.shape != out.shape:
                self.history_buffer.append(out)
                return out
            self.history_buffer.append(x)
            history = [x]
        out = self.skip(out, history)
        self.history_buffer.append(out)
        return out


def _targets(target_types, target_class_name):
    if target_types is None and target_class_name is None:
        raise TypeError("inject_mhc: pass target_types (a module class or a list of them) or target_class_name")
    types: tuple = ()
    if target_types is not None:
        types = (target_types,) if isinstance(target_types, type) else tuple(target_types)
        if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise TypeError(f"target_types must be an nn.Module class or a list of them, got {target_types!r}")
    if target_class_name is not None and not isinstance(target_class_name, str):
        raise TypeError(f"target_class_name must be a str, got {target_class_name!r}")

    def matches(module: nn.Module) -> bool:
        return isinstance(module, types) or type(module).__name__ == target_class_name

    return matches


def inject_mhc(
    model: nn.Module,
    target_types=None,
    max_history: int | None = None,
    clear_on_forward: bool | None = None,
    history_scope: str | None = None,
    *,
    target_class_name: str | None = None,
    **mhc_kwargs,
) -> nn.Module:
    """Wrap, in place, every submodule of ``model`` that is an instance of ``target_types`` (a
    class or a list of classes) or whose class is named ``target_class_name`` in an
    `InjectedMHC`, and return ``model``. ``history_scope`` ``"module"`` gives each wrapper its own
    buffer, ``"global"`` one buffer shared by all; ``mhc_kwargs`` go to each `MHCSkip`. Options left
    at None come from the default config. Adds ``model.clear_mhc_history()``.

    Differences from the package: history never outlives a call of ``model``, so
    ``clear_on_forward=False`` changes nothing (warned once); ``detach_history`` detaches the older
    states only; modules already wrapped, and modules marked `mhc_compatible`, are left alone (as
    the package's docs say); no match is a ``ValueError``."""
    warn_once(
        "inject_mhc",
        "compat.inject_mhc wraps modules and adds skip connections the model did not have (the package's "
        "meaning); mhc_fx.inject_mhc instead converts the model's own residual adds and keeps its function",
    )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    matches = _targets(target_types, target_class_name)
    max_history = resolve_default(max_history, "max_history")
    history_scope = resolve_default(history_scope, "history_scope")
    if history_scope not in HISTORY_SCOPES:
        raise ValueError(f"history_scope must be one of {HISTORY_SCOPES}, got {history_scope!r}")
    if resolve_default(clear_on_forward, "clear_history_each_forward") is False:
        warn_once("clear_on_forward", "clear_on_forward=False does not carry history into the next call")
    if "detach_history" in mhc_kwargs:
        check_detach(mhc_kwargs["detach_history"])
    else:
        mhc_kwargs["detach_history"] = resolve_default(None, "detach_history")
    buffers: list[HistoryBuffer] = []
    shared = HistoryBuffer(max_history) if history_scope == "global" else None
    scope = _CallScope(buffers)

    def replace(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, InjectedMHC) or getattr(child, "_mhc_compatible", False):
                continue
            if not matches(child):
                replace(child)
                continue
            buffer = shared if shared is not None else HistoryBuffer(max_history)
            if buffer not in buffers:
                buffers.append(buffer)
            wrapper = InjectedMHC(child, buffer, max_history=max_history, **mhc_kwargs)
            wrapper._scope = scope
            setattr(module, name, wrapper)

    replace(model)
    if not buffers:
        raise ValueError(
            f"inject_mhc: no submodule of the model matches target_types={target_types!r}, "
            f"target_class_name={target_class_name!r}"
        )
    model.register_forward_pre_hook(scope.enter)
    model.register_forward_hook(scope.exit, always_call=True)

    def clear_mhc_history() -> None:
        """Empty every buffer of this injection (already empty between calls)."""
        for buffer in buffers:
            buffer.clear()

    model.clear_mhc_history = clear_mhc_history
    return model


def inject_mhc_default(
    model: nn.Module, max_history: int | None = None, clear_on_forward: bool | None = None, **mhc_kwargs
) -> nn.Module:
    """`inject_mhc` on every ``nn.Linear``, ``nn.Conv2d`` and ``nn.LayerNorm`` of ``model``."""
    return inject_mhc(
        model, list(DEFAULT_TARGETS), max_history=max_history, clear_on_forward=clear_on_forward, **mhc_kwargs
    )
