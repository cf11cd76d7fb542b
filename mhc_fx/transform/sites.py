"""Find residual sites and chains on a captured graph (DESIGN §1).

A tagged addition ``y = a + b`` is a *site* when one operand (the stream) is an
ancestor of the other (the branch), the branch path holds an op with parameters,
and stream, branch and result share shape and a floating dtype. Site j joins the
chain of site i when its stream is computed from ``y_i`` alone through
shape-preserving single-input ops (dropout, a norm, an activation, a cast) and
site i is that chain's latest site.
"""

from __future__ import annotations

import dataclasses
import operator

import torch
from torch import fx, nn

from . import projecting
from .capture import TAG_TARGETS, Captured
from .rewriter import VIEW_METHODS

# fx (no shapes known): single-input ops taken as shape-preserving when linking chains.
_PRESERVING_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Softplus,
    nn.PReLU,
)
_PRESERVING_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    torch.nn.functional.relu,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
    torch.nn.functional.dropout,
    torch.nn.functional.layer_norm,
    torch.nn.functional.leaky_relu,
    torch.nn.functional.elu,
}
_PRESERVING_METHODS = {"relu", "contiguous", "clone", "detach", "float", "to", "type_as", "tanh", "sigmoid"}
# Ops that only re-view or cast a value; an operand reached through them is the same stream.
_ALIAS_NAMES = {
    "to",
    "_to_copy",
    "clone",
    "alias",
    "contiguous",
    "detach",
    "lift_fresh_copy",
    "type_as",
    "view",
    "reshape",
}
NEEDS_SHAPES = "auto_project needs the shapes of the states it maps"
_PLAIN_ADDS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
_INPLACE_ADDS = {operator.iadd, torch.ops.aten.add_.Tensor}


@dataclasses.dataclass
class FoundSite:
    tag: int
    node: fx.Node
    stream_first: bool
    shape: tuple | None
    chain: int = -1
    position: int = 0
    # auto_project: the value ``x`` of ``shortcut(x) + f(x)`` (None for any other site) and its shape
    origin: fx.Node | None = None
    origin_shape: tuple | None = None
    # the stream is the previous site's output itself (through aliases only): n streams can pass
    link_alias: bool = False
    link_op: str = ""  # otherwise, the op between them (for the report)


@dataclasses.dataclass
class Rejected:
    tag: int | None  # None for an addition that mhc_fx could not rewrite
    where: str
    reason: str
    path: str = ""  # the module whose forward ran the addition (untagged additions)


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if _maybe_tensor(n)]


def _val(node: fx.Node):
    return node.meta.get("val")


def _maybe_tensor(node: fx.Node) -> bool:
    val = _val(node)
    if val is not None:
        return isinstance(val, torch.Tensor)
    if node.op == "call_method" and node.target in ("size", "dim", "numel"):
        return False
    if node.op == "call_function" and node.target in (getattr, len):
        return False
    return True


def _op_name(node: fx.Node) -> str:
    target = node.target
    if isinstance(target, str):
        return target
    packet = getattr(target, "overloadpacket", None)
    return getattr(packet or target, "__name__", "")


def _canonical(node: fx.Node) -> fx.Node:
    """Follow alias and no-op cast ops back to the value they re-view."""
    while node.op in ("call_function", "call_method") and _op_name(node) in _ALIAS_NAMES:
        inputs = [n for n in node.all_input_nodes if _maybe_tensor(n)]
        out, src = _val(node), _val(inputs[0]) if len(inputs) == 1 else None
        if len(inputs) != 1:
            break
        if isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor):
            if out.shape != src.shape or out.dtype != src.dtype:
                break
        node = inputs[0]
    return node


#: Ops that re-view the stream between two residual adds (Swin's reshape, NCHW <-> NHWC permutes):
#: the chain goes on through them, and at run time the window is re-viewed the same way.
_REVIEW_NAMES = frozenset(VIEW_METHODS) | {"_unsafe_view"}  # the aten spelling of a reshape


def _is_review(node: fx.Node, source: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method") or _op_name(node) not in _REVIEW_NAMES:
        return False
    out, src = _val(node), _val(source)
    if isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor):
        try:
            return bool(out.numel() == src.numel()) and out.dtype == src.dtype
        except Exception:  # symbolic sizes that cannot be compared: a re-view keeps the element count
            return out.dtype == src.dtype
    return True


def _is_size(node: fx.Node) -> bool:
    """A value computed from tensor sizes only (``b, t, c = x.shape``; ``x.size(-1)``; SymInts)."""
    val = _val(node)
    if val is not None:
        return not isinstance(val, torch.Tensor)
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return True
    if node.op == "call_method" and node.target == "size":
        return True
    if node.op == "call_function" and node.target in (operator.getitem, operator.mul, operator.floordiv):
        return all(_is_size(n) for n in node.all_input_nodes)
    return False


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for parent in stack.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


class SiteFinder:
    """Runs the analysis over one `Captured` graph."""

    def __init__(self, captured: Captured, inplace_tags: frozenset = frozenset(), auto_project: bool = False) -> None:
        self.cap = captured
        self.inplace_tags = inplace_tags
        self.auto_project = auto_project
        self.order = {n: i for i, n in enumerate(captured.graph.nodes)}
        self.origins: dict[fx.Node, fx.Node] = {}  # projection-shortcut site -> the value it projects
        self._constants: dict[fx.Node, bool] = {}

    # -- per-node facts --------------------------------------------------------
    def _non_param_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in _tensor_inputs(node) if n not in self.cap.param_nodes and n.op != "get_attr"]

    def _uses_params(self, node: fx.Node) -> bool:
        if node in self.cap.param_modules:
            return True
        return any(n in self.cap.param_nodes for n in node.all_input_nodes)

    def _is_preserving(self, node: fx.Node, source: fx.Node) -> bool:
        out, src = _val(node), _val(source)
        if isinstance(out, torch.Tensor) and isinstance(src, torch.Tensor):
            return out.shape == src.shape
        if self.cap.has_shapes:
            return False
        if node.op == "call_module":
            return issubclass(self.cap.module_types.get(node, object), _PRESERVING_MODULES)
        if node.op == "call_function":
            return node.target in _PRESERVING_FUNCTIONS
        if node.op == "call_method":
            return node.target in _PRESERVING_METHODS
        return False

    def _on_path_with_params(self, stream: fx.Node, branch: fx.Node, ancestors: set) -> bool:
        seen, stack = {stream}, [stream]
        while stack:
            node = stack.pop()
            if node is not stream and self._uses_params(node):
                return True
            for user in node.users:
                if user in ancestors and user not in seen:
                    seen.add(user)
                    stack.append(user)
        return False

    # -- the criteria ------------------------------------------------------------
    def classify(self, node: fx.Node) -> tuple[bool | None, str]:
        """(stream_first, "") for a site, else (None, reason)."""
        a, b = node.args[0], node.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return None, "an operand is a constant"
        if a is b:
            return None, "both operands are the same value (x + x)"
        ca, cb = _canonical(a), _canonical(b)
        anc_b, anc_a = _ancestors(b), _ancestors(a)
        if ca in anc_b and ca is not cb:
            stream, branch, stream_first, ancestors = ca, b, True, anc_b
        elif cb in anc_a and ca is not cb:
            stream, branch, stream_first, ancestors = cb, a, False, anc_a
        else:
            parallel = self._parallel_branch(ca, cb, b, anc_b) or self._parallel_branch(cb, ca, a, anc_a)
            if parallel is None and self.auto_project:
                projected = self._projection_site(node, ca, cb, anc_a, anc_b)
                if projected is not None:
                    return projected
            if parallel is None:
                scaled = self._scaled_stream(ca, anc_b) or self._scaled_stream(cb, anc_a)
                return None, scaled or "neither operand is computed from the other (not a residual connection)"
            stream, branch, ancestors, origin = parallel
            stream_first = stream is ca
            if not self._on_path_with_params(origin, branch, ancestors):
                return None, "the branch path holds no op with parameters (bias, embedding, mask or activation add)"
            return self._check_values(stream, branch, node, stream_first)
        if not self._on_path_with_params(stream, branch, ancestors):
            return None, "the branch path holds no op with parameters (bias, embedding, mask or activation add)"
        return self._check_values(stream, branch, node, stream_first)

    def _check_values(self, stream: fx.Node, branch: fx.Node, node: fx.Node, stream_first: bool):
        vals = [_val(n) for n in (stream, branch, node)]
        if all(isinstance(v, torch.Tensor) for v in vals):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) != 1:
                return None, f"operand shapes differ ({' vs '.join(str(tuple(v.shape)) for v in vals[:2])})"
            if not all(v.is_floating_point() for v in vals) or len({v.dtype for v in vals}) != 1:
                return None, f"operands are not of one floating dtype ({vals[0].dtype}, {vals[1].dtype})"
        return stream_first, ""

    def _scaled_stream(self, operand: fx.Node, anc_other: set) -> str | None:
        """The reason when ``operand`` is a scaled copy (``c * x``) of a value the other operand is computed
        from: ``c * x + f(x)``, ``torch.add(f(x), x, alpha=c)`` (the stream would be scaled)."""
        if operand.op not in ("call_function", "call_method") or _op_name(operand) != "mul":
            return None
        inputs = self._non_param_inputs(operand)
        if len(inputs) != 1 or _canonical(inputs[0]) not in anc_other:
            return None
        return "the stream is scaled (`c * x + f(x)`, `torch.add(f(x), x, alpha=c)`): not a residual connection"

    def _constant(self, node: fx.Node) -> bool:
        """Computed from parameters, buffers and constants only (a standardised conv weight), not
        from the model's inputs."""
        if not self._constants:  # one pass in graph (topological) order
            for n in self.cap.graph.nodes:
                if n.op == "placeholder":
                    self._constants[n] = n in self.cap.param_nodes or n in self.cap.buffer_nodes
                else:
                    self._constants[n] = n.op == "get_attr" or all(self._constants[i] for i in n.all_input_nodes)
        return self._constants[node]

    def _walk_back(self, node: fx.Node, targets: set, limit: int = 8) -> tuple[fx.Node, int, bool] | None:
        """Follow ``node`` back through single-input ops to the first value in ``targets``:
        (that value, steps, whether an op on the way has parameters); None past ``limit`` or a fork."""
        steps, params = 0, False
        while node not in targets:
            inputs = [n for n in self._non_param_inputs(node) if not _is_size(n) and not self._constant(n)]
            if len(inputs) != 1 or steps == limit:
                return None
            params = params or self._uses_params(node)
            node, steps = _canonical(inputs[0]), steps + 1
        return node, steps, params

    def _projection_site(self, node: fx.Node, ca: fx.Node, cb: fx.Node, anc_a: set, anc_b: set):
        """``shortcut(x) + f(x)`` with ``auto_project``: the operand that reaches ``x`` in fewer
        single-input steps, through an op with parameters, is the shortcut (the site's stream); the
        other, computed from ``x`` through parameters too, the branch. None when it is no such add."""
        walks = []
        for stream, branch, anc_branch, stream_first in ((ca, cb, anc_b, True), (cb, ca, anc_a, False)):
            walk = self._walk_back(stream, anc_branch)
            if walk is not None and walk[2] and self._on_path_with_params(walk[0], branch, anc_branch):
                walks.append((walk[1], stream, branch, stream_first, walk[0]))
        walks.sort(key=lambda w: w[0])
        if not walks or (len(walks) == 2 and walks[0][0] == walks[1][0]):
            return None
        _, stream, branch, stream_first, origin = walks[0]
        origin_val, stream_val = _val(origin), _val(stream)
        if not (isinstance(origin_val, torch.Tensor) and isinstance(stream_val, torch.Tensor)):
            return None, f"a projection shortcut: {NEEDS_SHAPES}; pass example_inputs="
        mapped = projecting.weight_shape(tuple(origin_val.shape), tuple(stream_val.shape))
        if isinstance(mapped, str):
            return None, f"a projection shortcut auto_project cannot follow: {mapped}"
        stream_first, reason = self._check_values(stream, _canonical(branch), node, stream_first)
        if stream_first is not None:
            self.origins[node] = origin
        return stream_first, reason

    def _parallel_branch(self, y: fx.Node, other_canonical: fx.Node, other: fx.Node, anc_other: set):
        """A parallel block written left to right, ``x + attn(h) + mlp(h)``: ``y = x + attn(h)`` is a
        residual site and ``other`` (``mlp(h)``) is computed from that site's stream ``x``, not from
        ``y``. Then ``y + other`` is the next site of the same chain, with ``y`` as its stream (at
        init it adds exactly ``other`` to ``y``). Returns (stream, branch, ancestors, origin)."""
        if y is other_canonical or y.op != "call_function" or y.target not in (*TAG_TARGETS, *_PLAIN_ADDS):
            return None
        stream_first, _ = self.classify(y)
        if stream_first is None:
            return None
        origin = _canonical(y.args[0] if stream_first else y.args[1])
        if origin not in anc_other:
            return None
        return y, other, anc_other, origin

    def _chain_source(self, stream: fx.Node, site_of: dict) -> fx.Node | None:
        node, reviewed = stream, False
        while node not in site_of:
            inputs = [n for n in self._non_param_inputs(node) if not _is_size(n)]
            if len(inputs) != 1:
                return None
            if _is_review(node, inputs[0]):
                reviewed = True
            elif reviewed or not self._is_preserving(node, inputs[0]):
                # The run time re-views a chain's window where a site's output itself is re-viewed
                # (`CallScope.reviewed`): re-views come first, then norms, dropouts, casts.
                return None
            node = inputs[0]
        return node

    def _used_after(self, value: fx.Node, node: fx.Node) -> bool:
        return any(self.order[user] > self.order[node] for user in value.users)

    def find(self) -> tuple[list[FoundSite], list[Rejected]]:
        sites: list[FoundSite] = []
        rejected: list[Rejected] = []
        for node in self.cap.graph.nodes:
            if node.op != "call_function" or node.target not in TAG_TARGETS:
                continue
            tag = node.args[2]
            stream_first, reason = self.classify(node)
            if stream_first is not None and tag in self.inplace_tags and self._used_after(node.args[0], node):
                stream_first, reason = (
                    None,
                    (
                        "in-place add on a value that another name reads later: converting it would change what that "
                        "name sees"
                    ),
                )
            if stream_first is None:
                rejected.append(Rejected(tag, "", reason))
                continue
            val = _val(node)
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
            origin = self.origins.get(node)
            origin_shape = tuple(_val(origin).shape) if origin is not None else None
            sites.append(FoundSite(tag, node, stream_first, shape, origin=origin, origin_shape=origin_shape))
        return sites, rejected

    def link_chains(self, sites: list[FoundSite]) -> None:
        """Assign chain ids and positions in graph order."""
        site_of = {s.node: s for s in sites}
        tail: dict[int, FoundSite] = {}
        next_chain = 0
        for site in sorted(sites, key=lambda s: self.order[s.node]):
            stream = site.node.args[0] if site.stream_first else site.node.args[1]
            # a projection-shortcut site continues the chain of the value it projects
            source = self._chain_source(site.origin if site.origin is not None else stream, site_of)
            parent = site_of.get(source) if source is not None else None
            if parent is not None and parent.chain >= 0 and tail.get(parent.chain) is parent:
                site.chain, site.position = parent.chain, parent.position + 1
                site.link_alias = site.origin is None and _canonical(stream) is source
                site.link_op = "" if site.link_alias else _op_name(_canonical(stream)) or str(stream)
            else:
                site.chain, site.position = next_chain, 1
                site.origin = site.origin_shape = None  # a new chain: nothing older to map
                next_chain += 1
            tail[site.chain] = site

    def untagged_sites(self) -> list[Rejected]:
        """Additions that would be sites but were not rewritten (library code, unrewritable source)."""
        out = []
        for node in self.cap.graph.nodes:
            if node.op not in ("call_function", "call_method") or len(node.args) < 2:
                continue
            is_add = node.target in _PLAIN_ADDS or (node.op == "call_method" and node.target in ("add", "add_"))
            if not is_add or len(node.kwargs) or not isinstance(node.args[1], fx.Node):
                continue
            stream_first, _ = self.classify(node)
            if stream_first is not None:
                reason = "a residual-like add in code mhc_fx could not rewrite"
                if node.target in _INPLACE_ADDS or node.target == "add_":
                    reason += (
                        " (in place: only a local name, `h += b` or `h.add_(b)`, can be rebound to a site's "
                        "result; not `self.h += b`, `self.h.add_(b)` or `h[i].add_(b)`)"
                    )
                out.append(Rejected(None, _where(node), reason, _module_path(node)))
        return out


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    return next(reversed(stack.values()))[0] if stack else ""


def _where(node: fx.Node) -> str:
    path = _module_path(node)
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    line = trace[-1].strip() if trace else ""
    return f"{path}: {line}" if path else line or node.name
