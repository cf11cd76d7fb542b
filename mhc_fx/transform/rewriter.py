"""Which expressions of a function body become calls of the site runtime (the AST transformer).

`_AddRewriter` turns every addition spelling into a call of a site helper named below, re-views
of the stream into `VIEW` calls, ``checkpoint(...)`` into `CHECKPOINT`, and (when following) the
calls that may run an addition elsewhere into `CALL` / `SUPER_CALL`. `source` parses the function,
runs this transformer and compiles the result.
"""

from __future__ import annotations

import ast
import operator
import types
from collections.abc import Callable

import torch

from .names import Names

ADD = "__mhc_fx_add"
IADD = "__mhc_fx_iadd"
CHECKPOINT = "__mhc_fx_checkpoint"
ENTER = "__mhc_fx_enter"
EXIT = "__mhc_fx_exit"
CALL = "__mhc_fx_call"  # a call that may run a helper holding residual adds (`_AddRewriter._followed_call`)
SUPER_CALL = "__mhc_fx_super_call"  # super().name(...), followed the same way
HELPER_SELF = "__mhc_fx_self"  # a followed helper's first parameter: the module whose forward called it
AT = "__mhc_fx_at"  # a followed helper's second parameter: the location (a tuple) of the call
TOKEN = "__mhc_fx_token"
# Derived here from the ADD / IADD helpers (see `_derived_helpers`).
METHOD_ADD = "__mhc_fx_method_add"  # a.add(b[, alpha=k])
METHOD_IADD = "__mhc_fx_method_iadd"  # h.add_(b[, alpha=k])
SCALE = "__mhc_fx_scale"  # the branch of torch.add(a, b, alpha=k)
VIEW = "__mhc_fx_view"  # x.reshape(...), torch.permute(x, ...), ...: re-views a chain's window with the stream
#: The tensor methods (and the torch functions of the same names) routed through `VIEW`.
VIEW_METHODS = (
    "view",
    "reshape",
    "permute",
    "transpose",
    "flatten",
    "unflatten",
    "movedim",
    "swapaxes",
    "squeeze",
    "unsqueeze",
    "contiguous",
)


def _is_one(expr: ast.expr) -> bool:
    return isinstance(expr, ast.Constant) and type(expr.value) in (int, float) and expr.value == 1


class _AddRewriter(ast.NodeTransformer):
    """Turns the additions of a forward's body into site-helper calls, numbering them in post-order."""

    def __init__(
        self,
        self_name: str | None,
        names: Names | None = None,
        rebindable: frozenset = frozenset(),
        *,
        helper: bool = False,
        follow: Callable[[types.FunctionType], bool] | None = None,
    ) -> None:
        self.self_name = self_name  # the function's `self` (None for a module-level helper)
        # A forward passes its own `self` to the site helpers with a constant location; a followed
        # helper passes the module and the location prefix it was called with (`HELPER_SELF`, `AT`).
        self.module_name = HELPER_SELF if helper else self_name
        self.helper = helper
        # rewrite calls of helpers that may hold residual adds (`_followed_call`); ``follow(fn)`` says
        # whether a plain function called by name is one
        self.follow = follow
        self.names = names or Names(None)
        self.rebindable = rebindable  # local names of the forward that `h.add_(b)` may rebind
        self.count = 0
        self.located: list[tuple[int, ast.AST]] = []  # (loc, the node of the addition or call in the source)
        self.calls: set[int] = set()  # the locations of followed calls (`CALL`, `SUPER_CALL`)
        self._pending: list[tuple[bool, ast.Constant, ast.AST]] = []  # (is a call, its number, its node)
        self._nested = 0
        self._rebinds: set[int] = set()  # ids of the `h := IADD(...)` expressions made for `h.add_(b)`

    def _call(self, helper: str, origin: ast.AST, *args: ast.expr) -> ast.Call:
        number = ast.Constant(None)  # filled in by `number_locations` once the whole body is seen
        self._pending.append((helper in (CALL, SUPER_CALL), number, origin))
        self.count += 1
        call = ast.Call(ast.Name(helper, ast.Load()), [self._module(), self._loc(number), *args], [])
        return ast.copy_location(call, origin)

    def number_locations(self) -> None:
        """Number the additions 0, 1, ... in source order, then the followed calls after them: an add
        keeps its number whether or not the function also calls helpers (``add#0`` is the first add)."""
        adds = [p for p in self._pending if not p[0]]
        calls = [p for p in self._pending if p[0]]
        for loc, (is_call, number, origin) in enumerate(adds + calls):
            number.value = loc
            self.located.append((loc, origin))
            if is_call:
                self.calls.add(loc)
        self._pending = []

    def _module(self) -> ast.Name:
        return ast.Name(self.module_name, ast.Load())

    def _loc(self, number: ast.Constant) -> ast.expr:
        """A forward's location is ``loc``; a followed helper's is ``AT + (loc,)`` (a tuple: the path of
        call locations that led to it, then its own)."""
        if not self.helper:
            return number
        return ast.BinOp(ast.Name(AT, ast.Load()), ast.Add(), ast.Tuple([number], ast.Load()))

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        return node  # a nested class has its own `self`

    def _visit_scope(self, node: ast.AST) -> ast.AST:
        self._nested += 1
        try:
            self.generic_visit(node)
        finally:
            self._nested -= 1
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_scope
    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _visit_scope

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Add):
            return self._call(ADD, node, node.left, node.right)
        return node

    @staticmethod
    def _alpha(node: ast.Call) -> ast.expr | None | bool:
        """The ``alpha=`` of an add call: None when absent or a literal 1, False when other keywords exist."""
        if any(k.arg != "alpha" for k in node.keywords):
            return False
        return next((k.value for k in node.keywords if not _is_one(k.value)), None)

    def _function_add(self, node: ast.Call) -> ast.expr | None:
        """``torch.add(a, b[, alpha=k])``, ``torch.Tensor.add(a, b[, alpha=k])``, ``operator.add(a, b)``."""
        func, names = node.func, self.names
        if len(node.args) != 2 or any(isinstance(a, ast.Starred) for a in node.args):
            return None
        if names.refers_to(func, operator.add, "operator.add"):
            return None if node.keywords else self._call(ADD, node, *node.args)
        if not (
            names.refers_to(func, torch.add, "torch.add") or names.refers_to(func, torch.Tensor.add, "torch.Tensor.add")
        ):
            return None
        alpha = self._alpha(node)
        if alpha is False:
            return None  # out= and the like: left as it is
        a, b = node.args
        if alpha is not None:
            b = ast.Call(ast.Name(SCALE, ast.Load()), [alpha, b], [])
        return self._call(ADD, node, a, b)

    def _method_add(self, node: ast.Call) -> ast.expr | None:
        """``a.add(b[, alpha=k])`` and ``h.add_(b[, alpha=k])`` with ``h`` a local name."""
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr in ("add", "add_")):
            return None
        if len(node.args) != 1 or isinstance(node.args[0], ast.Starred) or self.names.is_namespace(func.value):
            return None
        alpha = self._alpha(node)
        if alpha is False:
            return None
        args = [func.value, node.args[0], *([alpha] if alpha is not None else [])]
        if func.attr == "add":
            return self._call(METHOD_ADD, node, *args)
        # In place: `h` is rebound to the result (the site's output when the addition is a site), as
        # `h += b` is. Only a local name of the forward itself can be rebound: not `self.h`, `h[i]` or
        # `f(x)`, nor a name inside a nested function, lambda or comprehension.
        target = func.value
        if not (isinstance(target, ast.Name) and target.id in self.rebindable and target.id != self.self_name):
            return None
        if self._nested:
            return None
        call = self._call(METHOD_IADD, node, ast.Name(target.id, ast.Load()), *args[1:])
        rebind = ast.copy_location(ast.NamedExpr(ast.Name(target.id, ast.Store()), call), node)
        self._rebinds.add(id(rebind))
        return rebind

    def _view(self, node: ast.Call) -> ast.expr | None:
        """``x.reshape(...)`` / ``torch.reshape(x, ...)`` (and the other `VIEW_METHODS`) ->
        ``VIEW(self, x, "reshape", ...)``: the runtime re-views the window when ``x`` is a chain's stream."""
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr not in VIEW_METHODS:
            return None
        if self.names.is_namespace(func.value):
            target = getattr(torch, func.attr, None)
            if target is None or not self.names.refers_to(func, target, f"torch.{func.attr}"):
                return None
            if not node.args or isinstance(node.args[0], ast.Starred):
                return None
            value, rest = node.args[0], node.args[1:]
        else:
            value, rest = func.value, node.args
        args = [self._module(), value, ast.Constant(func.attr), *rest]
        return ast.copy_location(ast.Call(ast.Name(VIEW, ast.Load()), args, node.keywords), node)

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        rewritten = self._function_add(node) or self._method_add(node) or self._view(node)
        if rewritten is not None:
            return rewritten
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "checkpoint" and node.args:
            # checkpoint(f, *args) -> __mhc_fx_checkpoint(self, checkpoint, f, *args): the runtime
            # replays f's history on recompute (only for torch.utils.checkpoint.checkpoint).
            args = [self._module(), func, *node.args]
            return ast.copy_location(ast.Call(ast.Name(CHECKPOINT, ast.Load()), args, node.keywords), node)
        if self.follow and self._super_call(node):
            # super().name(...) -> SUPER_CALL(module, loc, __class__, self, "name", ...): Dynamo does not
            # see `super().name` as a bound method, so the runtime resolves it itself
            args = [ast.Name("__class__", ast.Load()), ast.Name(self.self_name, ast.Load()), ast.Constant(func.attr)]
            call = self._call(SUPER_CALL, node, *args, *node.args)
            call.keywords = node.keywords
            return call
        if self.follow and self._followed_call(node):
            call = self._call(CALL, node, func, *node.args)
            call.keywords = node.keywords
            return call
        return node

    def _super_call(self, node: ast.Call) -> bool:
        """``super().name(...)`` (zero-argument super) in a method."""
        func = node.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)):
            return False
        sup = func.value
        return (
            isinstance(sup.func, ast.Name)
            and sup.func.id == "super"
            and not sup.args
            and not sup.keywords
            and self.self_name is not None
            and not self._nested
        )

    def _followed_call(self, node: ast.Call) -> bool:
        """A call that may run a residual add of the model's own code outside the forward: a method or
        callable attribute of ``self`` (``self._out(h, x)``, diffusers' ``self.processor(...)``), a
        module-level function that holds additions (``dropout_add``).
        The runtime decides per call what it really is (`calls.site_call`); nn.Modules run unchanged."""
        func = node.func
        if isinstance(func, ast.Attribute):
            return isinstance(func.value, ast.Name) and func.value.id == self.self_name
        if isinstance(func, ast.Name):
            value = self.names.resolve(func)
            return isinstance(value, types.FunctionType) and self.follow(value)
        return False

    def visit_Expr(self, node: ast.Expr) -> ast.stmt:
        self.generic_visit(node)
        value = node.value
        if id(value) in self._rebinds:  # `h.add_(b)` as a statement: `h = IADD(...)`
            return ast.copy_location(ast.Assign([value.target], value.value), node)
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.stmt:
        self.generic_visit(node)
        if isinstance(node.op, ast.Add) and isinstance(node.target, ast.Name):
            target = node.target.id
            value = self._call(IADD, node, ast.Name(target, ast.Load()), node.value)
            return ast.copy_location(ast.Assign([ast.Name(target, ast.Store())], value), node)
        return node
