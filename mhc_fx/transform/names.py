"""How a forward's names resolve, for its rewrite: dotted names through the function's closure,
globals and builtins (``torch.add``, ``th.Tensor.add``), and the names its own scope binds."""

from __future__ import annotations

import ast
import builtins
import types

#: The nodes that open a scope of their own inside a function.
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

UNKNOWN = object()  # a name that does not resolve to a global, closure or builtin value
LOCAL = object()  # a name bound in the function itself


class Names:
    """Resolves dotted names (``torch.add``, ``th.Tensor.add``, ``operator.add``) the way the function
    would at run time: through its closure, globals and builtins, never through its own locals."""

    def __init__(self, raw: types.FunctionType | None, local_names: frozenset = frozenset()) -> None:
        self.local = local_names
        self.env: dict = {}
        if raw is not None:
            self.env = {**vars(builtins), **raw.__globals__}
            for name, cell in zip(raw.__code__.co_freevars, raw.__closure__ or ()):
                value = cell_value(cell, UNKNOWN)
                if value is not UNKNOWN:
                    self.env[name] = value

    def resolve(self, expr: ast.expr):
        if isinstance(expr, ast.Name):
            if expr.id in self.local:
                return LOCAL
            return self.env.get(expr.id, UNKNOWN)
        if isinstance(expr, ast.Attribute):
            base = self.resolve(expr.value)
            if isinstance(base, (types.ModuleType, type)):
                try:
                    return getattr(base, expr.attr)
                except Exception:
                    return UNKNOWN
            return LOCAL if base is LOCAL else UNKNOWN
        return UNKNOWN

    def refers_to(self, expr: ast.expr, target, spelling: str) -> bool:
        """``expr`` names ``target``; spelled ``spelling`` when the names cannot be resolved (no globals)."""
        value = self.resolve(expr)
        if value is UNKNOWN:
            return _dotted(expr) == spelling
        return value is target

    def is_namespace(self, expr: ast.expr) -> bool:
        """``expr`` names a module or a class (so ``expr.add(b)`` is no tensor method call)."""
        value = self.resolve(expr)
        if value is UNKNOWN:
            return _dotted(expr) in ("torch", "torch.Tensor", "operator", "np", "numpy", "math")
        return isinstance(value, (types.ModuleType, type))


def _dotted(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        base = _dotted(expr.value)
        return f"{base}.{expr.attr}" if base is not None else None
    return None


def local_names(fdef: ast.FunctionDef) -> frozenset:
    """The names bound in the function's own scope (parameters, assignments, imports, ...), not in
    nested functions, lambdas, comprehensions or classes; names declared global / nonlocal count too
    (rebinding them is what the function itself does)."""
    a = fdef.args
    names = {p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if p is not None}
    stack = list(fdef.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (*SCOPES, ast.ClassDef)):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return frozenset(names)


def cell_value(cell: types.CellType, default=None):
    try:
        return cell.cell_contents
    except ValueError:
        return default
