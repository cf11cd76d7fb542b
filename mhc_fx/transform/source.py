"""Rewrite a module's ``forward`` source so its additions go through the site runtime.

Every ``a + b``, ``x += b``, ``torch.add(a, b)``, ``torch.Tensor.add(a, b)``,
``operator.add(a, b)``, ``a.add(b)`` and ``h.add_(b)`` (``h`` a local name) in the
function body becomes a call of a site helper, ``__mhc_fx_add(self, LOC, a, b)``
(``LOC`` numbers the expression in the function); an ``alpha=`` other than 1 scales
the second operand (``a + alpha * b``), it is never dropped. ``h.add_(b)`` rebinds
``h`` to the helper's result, like ``h += b``. The body is wrapped in a scope
prologue/epilogue.

The new function is compiled as Python would compile it in its class: private names
(``self.__w``) are mangled with the class name. It keeps the original's globals,
closure *cells* (shared, so a later rebinding by the defining scope is seen;
``__class__`` too, for zero-argument ``super()``), defaults, annotations and
signature, so the user's module keeps its call signature and output types.
Decorators are kept by copying each wrapper with the wrapped function swapped in its
closure: wrappers found through ``__wrapped__`` (``functools.wraps``), and wrappers
without it that call a function of their closure with exactly their own arguments
(``def wrapper(*args, **kwargs): return fn(*args, **kwargs)``).
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
import types
from collections.abc import Callable

import torch

from . import wrappers
from .codegen import RewriteError, compile_like, strip_annotations
from .mangle import class_name, mangle_private_names
from .names import Names, local_names
from .rewriter import (  # noqa: F401  (the helper names are part of this module's interface)
    ADD,
    AT,
    CALL,
    CHECKPOINT,
    ENTER,
    EXIT,
    HELPER_SELF,
    IADD,
    METHOD_ADD,
    METHOD_IADD,
    SCALE,
    SUPER_CALL,
    TOKEN,
    VIEW,
    VIEW_METHODS,
    _AddRewriter,
)


# -- parsing and the shared front end of rewrite / count / locations ----------------------------------------------
def _parse(raw: types.FunctionType) -> ast.FunctionDef:
    try:
        source = textwrap.dedent(inspect.getsource(raw))
    except (OSError, TypeError) as exc:
        raise RewriteError(f"no source for {raw.__qualname__}: {exc}") from None
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise RewriteError(f"cannot parse the source of {raw.__qualname__}: {exc}") from None
    if not tree.body or not isinstance(tree.body[0], ast.FunctionDef):
        raise RewriteError(f"the source of {raw.__qualname__} is not a plain def")
    ast.increment_lineno(tree, raw.__code__.co_firstlineno - 1)
    return tree.body[0]


def _is_method(raw: types.FunctionType) -> bool:
    parts = raw.__qualname__.split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


def _prepare(
    raw: types.FunctionType, *, helper: bool = False, follow: bool = True
) -> tuple[ast.FunctionDef, _AddRewriter]:
    """Parse ``raw``, mangle its private names and rewrite its body's additions (the same numbering
    for `rewrite_function`, `rewrite_helper` and `add_locations`); ``follow=False`` leaves calls alone."""
    fdef = _parse(raw)
    mangle_private_names(fdef, class_name(raw))
    params = [*fdef.args.posonlyargs, *fdef.args.args]
    if helper:
        self_name = params[0].arg if params and _is_method(raw) else None
    else:
        self_name = params[0].arg if params else "self"
    local = local_names(fdef)
    rewriter = _AddRewriter(self_name, Names(raw, local), local, helper=helper, follow=followable if follow else None)
    fdef.body = [rewriter.visit(stmt) for stmt in fdef.body]
    rewriter.number_locations()
    return fdef, rewriter


def count_adds(fn: Callable) -> int:
    """How many rewritable additions the innermost function of ``fn`` holds itself (0 if no source)."""
    try:
        _, rewriter = _prepare(innermost(fn), follow=False)
    except RewriteError:
        return 0
    return rewriter.count


#: Modules whose functions are never followed: torch's own (its fused paths are not the model's
#: code) and Python's standard library.
_NOT_FOLLOWED = frozenset(sys.stdlib_module_names) | {"torch", "builtins"}
_DIRECT_ADDS: dict[types.CodeType, int] = {}


def own_code(fn: types.FunctionType) -> bool:
    """A plain function of the model's own code: not torch's, not the standard library's, not a
    decorator's wrapper (its wrapped function may be torch's or compiled)."""
    top = (getattr(fn, "__module__", None) or "").split(".")[0]
    return isinstance(fn, types.FunctionType) and top not in _NOT_FOLLOWED and not hasattr(fn, "__wrapped__")


def followable(fn: types.FunctionType) -> bool:
    """A function of the model's own code whose body holds additions: a rewritten forward follows
    its calls of it by name (``dropout_add(...)``)."""
    if not own_code(fn):
        return False
    code = fn.__code__
    if code not in _DIRECT_ADDS:
        try:
            _DIRECT_ADDS[code] = _prepare(fn, helper=True, follow=False)[1].count
        except RewriteError:
            _DIRECT_ADDS[code] = 0
    return _DIRECT_ADDS[code] > 0


# -- the site helpers derived from ADD / IADD -------------------------------------------------------------------
def _is_tensor_like(x) -> bool:
    return isinstance(x, (torch.Tensor, torch.fx.Proxy))


def _scale(alpha, b):
    """The branch of ``torch.add(a, b, alpha=alpha)``: ``alpha * b`` (``b`` itself when alpha is 1)."""
    if type(alpha) in (int, float, bool) and alpha == 1:
        return b
    return alpha * b


def _derived_helpers(helpers: dict[str, Callable]) -> dict[str, Callable]:
    add, iadd = helpers[ADD], helpers[IADD]

    def method_add(module, loc, a, b, *alpha):
        """``a.add(b[, alpha=k])``: a site add for tensors; any other object's own ``add``."""
        if not _is_tensor_like(a):
            return a.add(b, alpha=alpha[0]) if alpha else a.add(b)
        return add(module, loc, a, _scale(alpha[0], b) if alpha else b)

    def method_iadd(module, loc, a, b, *alpha):
        """``h.add_(b[, alpha=k])``: ``h += b`` for tensors (in place unless a site); returns what
        ``h`` is rebound to."""
        if not _is_tensor_like(a):
            if alpha:
                a.add_(b, alpha=alpha[0])
            else:
                a.add_(b)
            return a
        return iadd(module, loc, a, _scale(alpha[0], b) if alpha else b)

    return {METHOD_ADD: method_add, METHOD_IADD: method_iadd, SCALE: _scale}


# -- building the new function ----------------------------------------------------------------------------------
def _rewrite_raw(raw: types.FunctionType, helpers: dict[str, Callable]) -> types.FunctionType:
    fdef, rewriter = _prepare(raw)
    fdef.decorator_list = []
    strip_annotations(fdef)
    params = [*fdef.args.posonlyargs, *fdef.args.args]
    if not params:
        if raw.__code__.co_flags & inspect.CO_VARARGS:
            raise RewriteError(
                f"the forward is {raw.__qualname__}(*args, ...), a decorator's wrapper without functools.wraps "
                "whose wrapped function mhc_fx cannot find (it is no closure variable the wrapper calls with "
                "exactly its own arguments); decorate the wrapper with functools.wraps(fn)"
            )
        raise RewriteError(f"{raw.__qualname__} takes no `self` argument")
    self_name = rewriter.self_name
    enter = ast.Assign(
        [ast.Name(TOKEN, ast.Store())],
        ast.Call(ast.Name(ENTER, ast.Load()), [ast.Name(self_name, ast.Load())], []),
    )
    exit_call = ast.Call(ast.Name(EXIT, ast.Load()), [ast.Name(self_name, ast.Load()), ast.Name(TOKEN, ast.Load())], [])
    fdef.body = [enter, ast.Try(body=fdef.body, handlers=[], orelse=[], finalbody=[ast.Expr(exit_call)])]
    new = compile_like(fdef, raw, {**helpers, **_derived_helpers(helpers)})
    new.__kwdefaults__ = raw.__kwdefaults__
    new.__annotations__ = dict(getattr(raw, "__annotations__", {}))
    new.__qualname__ = raw.__qualname__
    new.__module__ = raw.__module__
    new.__doc__ = raw.__doc__
    return new


def rewrite_helper(raw: types.FunctionType, helpers: dict[str, Callable]) -> types.FunctionType | None:
    """A copy of ``raw`` (a function a rewritten forward calls) that takes ``(module, at, *raw's
    parameters)`` and whose additions call ``helpers`` at locations ``at + (loc,)``, keyed under
    ``module``'s path; its own calls of helpers are followed the same way. None when ``raw`` holds
    nothing to rewrite. Raises `RewriteError` when its source cannot be rewritten."""
    fdef, rewriter = _prepare(raw, helper=True)
    if rewriter.count == 0:
        return None
    fdef.decorator_list = []
    strip_annotations(fdef)
    fdef.args.posonlyargs = [ast.arg(HELPER_SELF), ast.arg(AT), *fdef.args.posonlyargs]
    new = compile_like(fdef, raw, {**helpers, **_derived_helpers(helpers)})
    new.__kwdefaults__ = raw.__kwdefaults__
    new.__qualname__ = raw.__qualname__
    new.__module__ = raw.__module__
    return new


# -- decorators -----------------------------------------------------------------------------------------------
def _source_of(f: types.FunctionType) -> ast.FunctionDef | None:
    try:
        return _parse(f)
    except RewriteError:
        return None


def _holds_additions(f: types.FunctionType, fdef: ast.FunctionDef) -> bool:
    rewriter = _AddRewriter("self", Names(f, local_names(fdef)))
    for stmt in fdef.body:
        rewriter.visit(stmt)
    return rewriter.count > 0


def _unwrap_chain(fn: Callable) -> list:
    return wrappers.unwrap_chain(fn, _source_of, _holds_additions)


def innermost(fn: Callable) -> Callable:
    """The function `rewrite_function` rewrites for ``fn``: through ``functools.wraps`` and plain passthrough
    wrappers to the function that holds the forward's code."""
    return _unwrap_chain(fn)[-1]


def rewrite_function(fn: Callable, helpers: dict[str, Callable]) -> types.FunctionType:
    """A copy of ``fn`` (possibly decorated) whose additions call ``helpers``.

    ``helpers`` maps the names `ADD`, `IADD`, `VIEW`, `CHECKPOINT`, `ENTER`, `EXIT` to the runtime's functions.
    Raises `RewriteError` when the source is unavailable or a decorator cannot be re-wrapped.
    """
    chain = _unwrap_chain(fn)
    if not all(isinstance(f, types.FunctionType) for f in chain):
        raise RewriteError(f"{getattr(fn, '__qualname__', fn)!r} is not a plain Python function")
    new = _rewrite_raw(chain[-1], helpers)
    for wrapper, old_inner in zip(reversed(chain[:-1]), reversed(chain[1:])):
        try:
            new = wrappers.rewrap(wrapper, old_inner, new)
        except ValueError as exc:
            raise RewriteError(str(exc)) from None
    return new


def add_locations(fn: Callable, calls: bool = False) -> list[tuple[int, int, int, str]]:
    """Where the rewritable additions of ``fn`` (its innermost function) are, numbered as `rewrite_function`
    numbers them: ``[(loc, lineno, col, text)]`` sorted by ``loc``. ``lineno`` is the line in ``fn``'s file,
    ``col`` the character column of the addition's first character in that line and ``text`` its source
    (an ``x += y`` statement for `IADD`). With ``calls=True`` the followed calls of helpers (whose
    additions are located ``(call loc, add loc)``) are listed too. Empty when ``fn`` has no source."""
    raw = innermost(fn)
    try:
        _, rewriter = _prepare(raw)
        lines, first = inspect.getsourcelines(raw)
    except (RewriteError, OSError, TypeError):
        return []
    dedented = textwrap.dedent("".join(lines))
    indent = len(lines[0]) - len(dedented.splitlines(keepends=True)[0])
    padded = "\n" * (first - 1) + dedented  # line numbers as in the file, columns as in the parsed source
    out = []
    for loc, node in rewriter.located:
        if getattr(node, "lineno", None) is None or (loc in rewriter.calls and not calls):
            continue
        text = ast.get_source_segment(padded, node) or ""
        line = padded.splitlines()[node.lineno - 1].encode()
        col = indent + len(line[: node.col_offset].decode(errors="ignore"))
        out.append((loc, node.lineno, col, text))
    return sorted(out)
