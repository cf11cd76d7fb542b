"""Private names (``self.__w``) of a forward compiled outside its class body.

Python mangles ``__w`` to ``_Cls__w`` in the body of ``class Cls``; the rewritten forward is
compiled at module level, where it would not, so `mangle_private_names` does it on the AST.
"""

from __future__ import annotations

import ast
import types


def class_name(raw: types.FunctionType) -> str | None:
    """The class whose body defines ``raw`` (its private names are mangled with it), from the qualname."""
    parts = raw.__qualname__.split(".")
    if len(parts) >= 2 and parts[-2] != "<locals>":
        return parts[-2]
    return None


def _mangle(name: str | None, cls: str) -> str | None:
    """``__x`` -> ``_Cls__x`` as Python does in the body of ``class Cls`` (leading underscores of the
    class name dropped; dunders, dotted names and all-underscore class names left alone)."""
    if name is None or not name.startswith("__") or name.endswith("__") or "." in name:
        return name
    stripped = cls.lstrip("_")
    return f"_{stripped}{name}" if stripped else name


class _Mangler(ast.NodeTransformer):
    """Mangles the private names of code that Python compiled inside ``class cls``: the rewritten
    function is compiled at module level, where Python would not."""

    def __init__(self, cls: str) -> None:
        self.cls = cls

    def _m(self, name):
        return _mangle(name, self.cls)

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self._m(node.id)
        return node

    def visit_Attribute(self, node: ast.Attribute) -> ast.Attribute:
        self.generic_visit(node)
        node.attr = self._m(node.attr)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        self.generic_visit(node)
        node.arg = self._m(node.arg)
        return node

    def _visit_def(self, node):
        self.generic_visit(node)
        node.name = self._m(node.name)
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_def

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.ExceptHandler:
        self.generic_visit(node)
        node.name = self._m(node.name)
        return node

    def visit_Global(self, node):
        node.names = [self._m(n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global

    def visit_alias(self, node: ast.alias) -> ast.alias:
        node.name = self._m(node.name)
        node.asname = self._m(node.asname)
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.ImportFrom:
        self.generic_visit(node)
        node.module = self._m(node.module)
        return node

    def visit_MatchAs(self, node):
        self.generic_visit(node)
        node.name = self._m(node.name)
        return node

    visit_MatchStar = visit_MatchAs

    def visit_MatchMapping(self, node):
        self.generic_visit(node)
        node.rest = self._m(node.rest)
        return node

    def visit_MatchClass(self, node):
        self.generic_visit(node)
        node.kwd_attrs = [self._m(a) for a in node.kwd_attrs]
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        inner = _Mangler(node.name)  # a nested class mangles its own body with its own name
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.body = [inner.visit(s) for s in node.body]
        node.name = self._m(node.name)
        return node


def mangle_private_names(fdef: ast.FunctionDef, cls: str | None) -> None:
    if cls is None:
        return
    mangler = _Mangler(cls)
    fdef.args = mangler.visit(fdef.args)
    fdef.body = [mangler.visit(stmt) for stmt in fdef.body]
