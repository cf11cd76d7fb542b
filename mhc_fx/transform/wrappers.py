"""Decorated forwards: find the function a wrapper wraps and put a rewritten one in its place.

Wrappers are followed through ``__wrapped__`` (``functools.wraps``) and, without it, through a
plain passthrough: a wrapper that calls one function of its closure with exactly its own
arguments (``def wrapper(*args, **kwargs): return fn(*args, **kwargs)``). ``source_of(f)`` (the
parsed ``def`` or None) and ``holds_additions(f, fdef)`` come from the rewriter.
"""

from __future__ import annotations

import ast
import inspect
import types
from collections.abc import Callable

from .names import cell_value


def _forwards_all_arguments(call: ast.Call, args: ast.arguments) -> bool:
    """``call`` passes every parameter of a function with signature ``args`` on unchanged and nothing else."""
    positional = [p.arg for p in [*args.posonlyargs, *args.args]]
    expected = [*positional, *([f"*{args.vararg.arg}"] if args.vararg else [])]
    given = []
    for a in call.args:
        if isinstance(a, ast.Name):
            given.append(a.id)
        elif isinstance(a, ast.Starred) and isinstance(a.value, ast.Name):
            given.append(f"*{a.value.id}")
        else:
            return False
    if given != expected or not expected:
        return False
    keywords = set()
    for k in call.keywords:
        if not isinstance(k.value, ast.Name):
            return False
        keywords.add(f"**{k.value.id}" if k.arg is None else f"{k.arg}={k.value.id}")
    wanted = {f"{p.arg}={p.arg}" for p in args.kwonlyargs} | ({f"**{args.kwarg.arg}"} if args.kwarg else set())
    return keywords == wanted and len(call.keywords) == len(wanted)


def _passthrough_target(f: Callable, source_of, holds_additions) -> types.FunctionType | None:
    """The function that ``f``, a decorator's wrapper without ``functools.wraps``, wraps: the one
    function of its closure that it calls with exactly its own arguments
    (``def wrapper(*args, **kwargs): ... fn(*args, **kwargs) ...``). None when ``f`` is no such wrapper,
    or when it holds additions of its own (then it is rewritten as the forward)."""
    if not isinstance(f, types.FunctionType) or not f.__closure__:
        return None
    functions = {
        name: value
        for name, cell in zip(f.__code__.co_freevars, f.__closure__)
        if isinstance(value := cell_value(cell), types.FunctionType)
    }
    if not functions:
        return None
    fdef = source_of(f)
    if fdef is None:
        # No source: only a wrapper with no named parameter and one function in its closure is clear.
        code = f.__code__
        generic = (
            code.co_argcount == 0 and code.co_flags & inspect.CO_VARARGS and code.co_flags & inspect.CO_VARKEYWORDS
        )
        return next(iter(functions.values())) if generic and len(functions) == 1 else None
    called = {
        node.func.id
        for node in ast.walk(fdef)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in functions
        and _forwards_all_arguments(node, fdef.args)
    }
    if len(called) != 1:
        return None
    if holds_additions(f, fdef):
        return None
    return functions[called.pop()]


def unwrap_chain(fn: Callable, source_of, holds_additions) -> list:
    """``fn``, then each function it wraps (``__wrapped__``, or a wrapper's passthrough call), innermost last."""
    chain = [fn]
    while True:
        f = chain[-1]
        inner = getattr(f, "__wrapped__", None)
        if inner is None:
            inner = _passthrough_target(f, source_of, holds_additions)
        if inner is None or any(inner is g for g in chain):
            return chain
        chain.append(inner)


def rewrap(wrapper: types.FunctionType, old_inner: Callable, new_inner: Callable) -> types.FunctionType:
    cells = list(wrapper.__closure__ or ())
    hits = [i for i, cell in enumerate(cells) if cell_value(cell) is old_inner]
    if not hits:
        raise ValueError(
            f"decorator {wrapper.__qualname__} does not hold the function it wraps in its closure; cannot re-wrap"
        )
    for i in hits:
        cells[i] = types.CellType(new_inner)
    new = types.FunctionType(
        wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__, tuple(cells)
    )
    new.__kwdefaults__ = wrapper.__kwdefaults__
    new.__dict__.update(wrapper.__dict__)
    if "__wrapped__" in wrapper.__dict__:  # a wrapper without functools.wraps keeps its own signature
        new.__wrapped__ = new_inner
    new.__qualname__ = wrapper.__qualname__
    new.__doc__ = wrapper.__doc__
    new.__module__ = wrapper.__module__
    return new
