"""Compile a rewritten ``def`` into a function that lives where the original did: its globals,
its own closure cells (a later rebinding by the defining scope is seen), its defaults."""

from __future__ import annotations

import ast
import types
from collections.abc import Callable

FACTORY = "__mhc_fx_factory"


class RewriteError(Exception):
    """The source of a forward cannot be rewritten (no source, odd decorator, ...)."""


def strip_annotations(fdef: ast.FunctionDef) -> None:
    # Annotations are copied from the original function object instead: evaluating
    # them here could fail (postponed evaluation, TYPE_CHECKING-only names).
    a = fdef.args
    for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
        if arg is not None:
            arg.annotation = None
    fdef.returns = None


def compile_like(fdef: ast.FunctionDef, raw: types.FunctionType, helpers: dict[str, Callable]) -> types.FunctionType:
    """Compile ``fdef`` as the body of a factory whose parameters are ``raw``'s free variables and the
    helpers, take the nested function's code, and build the function on ``raw``'s own closure cells (so
    a `nonlocal` rebinding by the defining scope is seen) plus one new cell per helper it uses. The
    factory never runs: default expressions are not evaluated again (``raw.__defaults__`` is used)."""
    freevars = list(raw.__code__.co_freevars)
    # Defaults live on the function object (raw's are used): none is compiled into the factory.
    fdef.args.defaults = [ast.Constant(None) for _ in fdef.args.defaults]
    fdef.args.kw_defaults = [None if d is None else ast.Constant(None) for d in fdef.args.kw_defaults]
    factory = ast.FunctionDef(
        name=FACTORY,
        args=ast.arguments(
            posonlyargs=[], args=[ast.arg(n) for n in [*freevars, *helpers]], kwonlyargs=[], kw_defaults=[], defaults=[]
        ),
        body=[fdef, ast.Return(ast.Name(fdef.name, ast.Load()))],
        decorator_list=[],
        type_params=[],
    )
    module = ast.fix_missing_locations(ast.Module(body=[factory], type_ignores=[]))
    try:
        code = compile(module, raw.__code__.co_filename, "exec")
    except (SyntaxError, ValueError, TypeError) as exc:
        raise RewriteError(f"the rewritten source of {raw.__qualname__} does not compile: {exc}") from None
    factory_code = next(c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == FACTORY)
    inner = next(c for c in factory_code.co_consts if isinstance(c, types.CodeType) and c.co_name == fdef.name)
    cells = dict(zip(freevars, raw.__closure__ or ()))
    missing = [n for n in inner.co_freevars if n not in cells and n not in helpers]
    if missing:
        raise RewriteError(f"the rewritten {raw.__qualname__} needs free variables {missing} it does not have")
    closure = tuple(cells[n] if n in cells else types.CellType(helpers[n]) for n in inner.co_freevars)
    return types.FunctionType(inner, raw.__globals__, raw.__name__, raw.__defaults__, closure)
