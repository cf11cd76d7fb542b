"""Residual adds in helpers: the calls a rewritten forward makes into the model's own code.

A rewritten forward routes the calls that may reach an addition outside its own body
(``self._out(h, x)``, ``self.processor(self, h)``, ``dropout_add(x, r, p, training)``; see
`source._AddRewriter._followed_call`) through `site_call`, and ``super().forward(x)`` through
`site_super_call`. While `convert`
analyses the model, `site_call` runs a rewritten copy of the callee (`source.rewrite_helper`) whose
additions are keyed ``(caller's path, call location + (add location,), occurrence)``, and records
which function it followed where. Only the call sites whose helper holds a site keep following after
`convert` (`keep_hosting`); every other call, and any call whose callee is no longer the analysed
function (a processor swapped later), runs the callee unchanged. So a helper shared by code that was
not converted is never touched, and nn.Module calls pass straight through.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from torch import nn

from . import source
from .checkpointing import site_checkpoint
from .runtime import SiteKey, enter_scope, exit_scope, runtime_of, site_add, site_iadd, site_view

PATH = "_mhc_fx_path"
#: The rewritten copy of each followed function (None: nothing to rewrite, or its source cannot be).
_REWRITTEN: dict[types.FunctionType, types.FunctionType | None] = {}


def _target(f: Any) -> tuple[types.FunctionType | None, tuple]:
    """The Python function a call of ``f`` runs and the arguments bound before the caller's."""
    if isinstance(f, types.FunctionType):
        return f, ()
    if isinstance(f, types.MethodType):
        return (f.__func__, (f.__self__,)) if isinstance(f.__func__, types.FunctionType) else (None, ())
    call = getattr(type(f), "__call__", None)
    return (call, (f,)) if isinstance(call, types.FunctionType) else (None, ())


def _rewritten(fn: types.FunctionType) -> types.FunctionType | None:
    if fn not in _REWRITTEN:
        _REWRITTEN[fn] = None  # a recursive helper follows itself as written
        try:
            _REWRITTEN[fn] = source.rewrite_helper(fn, HELPERS) if source.own_code(fn) else None
        except source.RewriteError:
            pass
    return _REWRITTEN[fn]


def site_call(module: nn.Module, loc: int | tuple, f: Callable, *args: Any, **kwargs: Any) -> Any:
    """``f(*args, **kwargs)`` at location ``loc`` of ``module``'s rewritten forward (or helper)."""
    if isinstance(f, nn.Module):
        return f(*args, **kwargs)
    rt = runtime_of(module)
    scope = rt.scope if rt is not None else None
    if scope is None:
        return f(*args, **kwargs)
    at = loc if isinstance(loc, tuple) else (loc,)
    where = (module.__dict__[PATH], at)
    target, bound = _target(f)
    if rt.tags is not None:  # analysis: follow every call into the model's own code
        rewritten = _rewritten(target) if target is not None else None
        if rewritten is not None:
            rt.followed.setdefault(where, (target, rewritten))
    else:
        target_then, rewritten = rt.followed.get(where, (None, None))
        if target_then is None or target is not target_then:
            return f(*args, **kwargs)
    if rewritten is None:
        return f(*args, **kwargs)
    return rewritten(module, at, *bound, *args, **kwargs)


def site_super_call(
    module: nn.Module, loc: int | tuple, cls: type, obj: Any, name: str, *args: Any, **kwargs: Any
) -> Any:
    """``super().<name>(*args, **kwargs)`` written in class ``cls``'s method with ``self`` = ``obj``. The
    class of ``obj`` never changes, so after analysis the followed function is not checked again."""
    rt = runtime_of(module)
    scope = rt.scope if rt is not None else None
    if scope is not None:
        at = loc if isinstance(loc, tuple) else (loc,)
        where = (module.__dict__[PATH], at)
        if rt.tags is not None:
            target, bound = _target(getattr(super(cls, obj), name))
            rewritten = _rewritten(target) if target is not None and len(bound) == 1 and bound[0] is obj else None
            if rewritten is not None:
                rt.followed.setdefault(where, (target, rewritten))
        else:
            rewritten = rt.followed.get(where, (None, None))[1]
        if rewritten is not None:
            return rewritten(module, at, obj, *args, **kwargs)
    return getattr(super(cls, obj), name)(*args, **kwargs)


def keep_hosting(followed: dict, keys: list[SiteKey]) -> dict:
    """The entries of ``followed`` (``{(path, call location): (function, rewritten)}``) on the way to a
    site (key ``(path, loc, n)`` with ``loc`` a tuple of call locations then the add's)."""
    needed = {(path, loc[:i]) for path, loc, _ in keys if isinstance(loc, tuple) for i in range(1, len(loc))}
    return {where: entry for where, entry in followed.items() if where in needed}


HELPERS = {
    source.ADD: site_add,
    source.IADD: site_iadd,
    source.VIEW: site_view,
    source.CALL: site_call,
    source.SUPER_CALL: site_super_call,
    source.CHECKPOINT: site_checkpoint,
    source.ENTER: enter_scope,
    source.EXIT: exit_scope,
}
