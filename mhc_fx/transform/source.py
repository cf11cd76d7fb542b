"""Rewrite a module's ``forward`` source so its additions go through the site runtime.

Every ``a + b``, ``torch.add(a, b)`` and ``x += b`` in the function body becomes a
call ``__mhc_fx_add(self, LOC, a, b)`` (``LOC`` numbers the expression in the
function), and the body is wrapped in a scope prologue/epilogue. The new function
keeps the original's globals, closure (including ``__class__`` for zero-argument
``super()``), defaults, annotations and signature, so the user's module keeps its
call signature and output types. Decorators are kept by copying each wrapper in
the ``__wrapped__`` chain with the wrapped function swapped in its closure.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
from collections.abc import Callable

ADD = "__mhc_fx_add"
IADD = "__mhc_fx_iadd"
CHECKPOINT = "__mhc_fx_checkpoint"
ENTER = "__mhc_fx_enter"
EXIT = "__mhc_fx_exit"
TOKEN = "__mhc_fx_token"
_FACTORY = "__mhc_fx_factory"


class RewriteError(Exception):
    """The source of a forward cannot be rewritten (no source, odd decorator, ...)."""


class _AddRewriter(ast.NodeTransformer):
    def __init__(self, self_name: str) -> None:
        self.self_name = self_name
        self.count = 0

    def _call(self, helper: str, left: ast.expr, right: ast.expr) -> ast.Call:
        loc = self.count
        self.count += 1
        args = [ast.Name(self.self_name, ast.Load()), ast.Constant(loc), left, right]
        return ast.Call(ast.Name(helper, ast.Load()), args, [])

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        return node  # a nested class has its own `self`

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Add):
            return ast.copy_location(self._call(ADD, node.left, node.right), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        func = node.func
        is_torch_add = (
            isinstance(func, ast.Attribute)
            and func.attr == "add"
            and isinstance(func.value, ast.Name)
            and func.value.id == "torch"
        )
        if is_torch_add and len(node.args) == 2 and not node.keywords:
            return ast.copy_location(self._call(ADD, node.args[0], node.args[1]), node)
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "checkpoint" and node.args:
            # checkpoint(f, *args) -> __mhc_fx_checkpoint(self, checkpoint, f, *args): the runtime
            # replays f's history on recompute (only for torch.utils.checkpoint.checkpoint).
            args = [ast.Name(self.self_name, ast.Load()), func, *node.args]
            return ast.copy_location(ast.Call(ast.Name(CHECKPOINT, ast.Load()), args, node.keywords), node)
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.stmt:
        self.generic_visit(node)
        if isinstance(node.op, ast.Add) and isinstance(node.target, ast.Name):
            target = node.target.id
            value = self._call(IADD, ast.Name(target, ast.Load()), node.value)
            return ast.copy_location(ast.Assign([ast.Name(target, ast.Store())], value), node)
        return node


def _strip_annotations(fdef: ast.FunctionDef) -> None:
    # Annotations are copied from the original function object instead: evaluating
    # them here could fail (postponed evaluation, TYPE_CHECKING-only names).
    a = fdef.args
    for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
        if arg is not None:
            arg.annotation = None
    fdef.returns = None


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


def count_adds(fn: Callable) -> int:
    """How many rewritable additions the innermost function of ``fn`` holds (0 if no source)."""
    try:
        fdef = _parse(inspect.unwrap(fn))
    except RewriteError:
        return 0
    rewriter = _AddRewriter("self")
    rewriter.visit(fdef)
    return rewriter.count


def _rewrite_raw(raw: types.FunctionType, helpers: dict[str, Callable]) -> types.FunctionType:
    fdef = _parse(raw)
    fdef.decorator_list = []
    _strip_annotations(fdef)
    params = [*fdef.args.posonlyargs, *fdef.args.args]
    if not params:
        raise RewriteError(f"{raw.__qualname__} takes no `self` argument")
    self_name = params[0].arg
    rewriter = _AddRewriter(self_name)
    fdef.body = [rewriter.visit(stmt) for stmt in fdef.body]
    enter = ast.Assign(
        [ast.Name(TOKEN, ast.Store())],
        ast.Call(ast.Name(ENTER, ast.Load()), [ast.Name(self_name, ast.Load())], []),
    )
    exit_call = ast.Call(ast.Name(EXIT, ast.Load()), [ast.Name(self_name, ast.Load()), ast.Name(TOKEN, ast.Load())], [])
    fdef.body = [enter, ast.Try(body=fdef.body, handlers=[], orelse=[], finalbody=[ast.Expr(exit_call)])]

    freevars = list(raw.__code__.co_freevars)
    factory_args = [ast.arg(name) for name in [*freevars, *helpers]]
    factory = ast.FunctionDef(
        name=_FACTORY,
        args=ast.arguments(posonlyargs=[], args=factory_args, kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[fdef, ast.Return(ast.Name(fdef.name, ast.Load()))],
        decorator_list=[],
        type_params=[],
    )
    module = ast.fix_missing_locations(ast.Module(body=[factory], type_ignores=[]))
    namespace: dict = {}
    exec(compile(module, raw.__code__.co_filename, "exec"), raw.__globals__, namespace)
    try:
        cells = [cell.cell_contents for cell in (raw.__closure__ or ())]
    except ValueError:
        raise RewriteError(f"{raw.__qualname__} has an empty closure cell") from None
    new = namespace[_FACTORY](*cells, *helpers.values())
    new.__defaults__ = raw.__defaults__
    new.__kwdefaults__ = raw.__kwdefaults__
    new.__annotations__ = dict(getattr(raw, "__annotations__", {}))
    new.__qualname__ = raw.__qualname__
    new.__module__ = raw.__module__
    new.__doc__ = raw.__doc__
    return new


def _rewrap(wrapper: types.FunctionType, old_inner: Callable, new_inner: Callable) -> types.FunctionType:
    cells = list(wrapper.__closure__ or ())
    hits = [i for i, cell in enumerate(cells) if _cell_value(cell) is old_inner]
    if not hits:
        raise RewriteError(
            f"decorator {wrapper.__qualname__} does not hold the function it wraps in its closure; cannot re-wrap"
        )
    for i in hits:
        cells[i] = types.CellType(new_inner)
    new = types.FunctionType(
        wrapper.__code__, wrapper.__globals__, wrapper.__name__, wrapper.__defaults__, tuple(cells)
    )
    new.__kwdefaults__ = wrapper.__kwdefaults__
    new.__dict__.update(wrapper.__dict__)
    new.__wrapped__ = new_inner
    new.__qualname__ = wrapper.__qualname__
    new.__doc__ = wrapper.__doc__
    new.__module__ = wrapper.__module__
    return new


def _cell_value(cell: types.CellType):
    try:
        return cell.cell_contents
    except ValueError:
        return None


def rewrite_function(fn: Callable, helpers: dict[str, Callable]) -> types.FunctionType:
    """A copy of ``fn`` (possibly decorated) whose additions call ``helpers``.

    ``helpers`` maps the names `ADD`, `IADD`, `CHECKPOINT`, `ENTER`, `EXIT` to the runtime's functions.
    Raises `RewriteError` when the source is unavailable or a decorator cannot be re-wrapped.
    """
    chain = [fn]
    while hasattr(chain[-1], "__wrapped__"):
        chain.append(chain[-1].__wrapped__)
    if not all(isinstance(f, types.FunctionType) for f in chain):
        raise RewriteError(f"{getattr(fn, '__qualname__', fn)!r} is not a plain Python function")
    new = _rewrite_raw(chain[-1], helpers)
    for wrapper, old_inner in zip(reversed(chain[:-1]), reversed(chain[1:])):
        new = _rewrap(wrapper, old_inner, new)
    return new


def add_locations(fn: Callable) -> list[tuple[int, int, int, str]]:
    """Where the rewritable additions of ``fn`` (its innermost function) are, numbered as `rewrite_function`
    numbers them: ``[(loc, lineno, col, text)]`` sorted by ``loc``. ``lineno`` is the line in ``fn``'s file,
    ``col`` the character column of the addition's first character in that line and ``text`` its source
    (an ``x += y`` statement for `IADD`). Empty when ``fn`` has no source."""
    raw = inspect.unwrap(fn)
    try:
        fdef = _parse(raw)
        lines, first = inspect.getsourcelines(raw)
    except (RewriteError, OSError, TypeError):
        return []
    dedented = textwrap.dedent("".join(lines))
    indent = len(lines[0]) - len(dedented.splitlines(keepends=True)[0])
    padded = "\n" * (first - 1) + dedented  # line numbers as in the file, columns as in the parsed source
    _AddRewriter("self").visit(fdef)
    out = []
    for node in ast.walk(fdef):
        # `a + b` / `torch.add` become located ADD calls; `x += b` becomes `x = IADD(...)` located at the statement.
        call = node.value if isinstance(node, ast.Assign) else node
        helper = IADD if isinstance(node, ast.Assign) else ADD
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == helper):
            continue
        if getattr(node, "lineno", None) is None:
            continue
        text = ast.get_source_segment(padded, node) or ""
        line = padded.splitlines()[node.lineno - 1].encode()
        col = indent + len(line[: node.col_offset].decode(errors="ignore"))
        out.append((call.args[1].value, node.lineno, col, text))
    return sorted(out)
