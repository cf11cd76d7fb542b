"""Capture one whole-model graph in which every rewritten addition is tagged.

While capturing, each tensor addition that went through the site runtime becomes
``torch.ops.mhc_fx.tag_add(a, b, tag)``: the integer ``tag`` indexes the runtime
key of that addition, so the analysis knows exactly which source addition (and
which occurrence of it) each graph node is, without reading stack traces.

Two capture paths: ``torch.fx.symbolic_trace`` (no inputs needed; shapes only if
example inputs are given), and ``torch.export.export(strict=False)`` for models
fx cannot trace (Hugging Face models), which needs example inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, fx, nn


@torch.library.custom_op("mhc_fx::tag_add", mutates_args=())
def _tag_add(a: Tensor, b: Tensor, tag: int) -> Tensor:
    """``a + b``, tagged for analysis (used only while capturing)."""
    return a + b


@_tag_add.register_fake
def _tag_add_fake(a: Tensor, b: Tensor, tag: int) -> Tensor:
    return a + b


TAG_TARGETS = (torch.ops.mhc_fx.tag_add.default, torch.ops.mhc_fx.tag_add)


@dataclasses.dataclass
class Captured:
    """A captured graph plus what the analysis needs to read it."""

    graph: fx.Graph
    method: str  # "fx" or "export"
    param_nodes: set  # nodes that are parameters
    param_modules: set  # call_module nodes of leaf modules with parameters
    module_types: dict  # call_module node -> module type (fx only)
    has_shapes: bool
    buffer_nodes: set = dataclasses.field(default_factory=set)  # export: placeholders of buffers


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """``example_inputs`` as (args, kwargs): a tensor, a tuple/list of args, or a dict of kwargs."""
    if example_inputs is None:
        return (), {}
    if isinstance(example_inputs, Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TypeError(
        "example_inputs must be a tensor, a tuple/list of positional args or a dict of keyword args, "
        f"got {type(example_inputs).__name__}"
    )


#: torch's own residual blocks, whose forwards are rewritten like user code (other torch
#: modules are library internals: their additions are never residual sites).
TORCH_RESIDUAL_BLOCKS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class _Tracer(fx.Tracer):
    """fx's tracer, but ``nn.Identity`` (as export does, so an identity shortcut does not
    hide that the stream feeds the branch) and torch's residual blocks are traced through
    instead of being leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Identity, *TORCH_RESIDUAL_BLOCKS)):
            return False
        return super().is_leaf_module(m, qualname)


def capture_fx(model: nn.Module, args: tuple, kwargs: dict) -> Captured:
    """Symbolically trace ``model`` (its instance-level rewritten forward included)."""
    root_forward = model.__dict__.get("forward")
    original_class = type(model)
    if root_forward is not None:
        # fx traces type(root).forward: give the root a throwaway subclass for the trace.
        model.__class__ = type(original_class.__name__, (original_class,), {"forward": root_forward.__func__})
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
    finally:
        model.__class__ = original_class
    has_shapes = False
    if args or kwargs:
        if kwargs:
            raise TypeError("fx capture takes positional example inputs only")
        gm = fx.GraphModule(model, graph)
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(*args)
        for node in graph.nodes:
            meta = node.meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                node.meta["val"] = torch.empty(meta.shape, dtype=meta.dtype, device="meta")
        has_shapes = True
    params = {id(p) for p in model.parameters()}
    param_nodes, param_modules, module_types = set(), set(), {}
    for node in graph.nodes:
        if node.op == "get_attr":
            try:
                value = model.get_parameter(node.target)
            except AttributeError:
                value = None
            if value is not None and id(value) in params:
                param_nodes.add(node)
        elif node.op == "call_module":
            sub = model.get_submodule(node.target)
            module_types[node] = type(sub)
            if any(True for _ in sub.parameters()):
                param_modules.add(node)
    return Captured(graph, "fx", param_nodes, param_modules, module_types, has_shapes)


def capture_export(model: nn.Module, args: tuple, kwargs: dict) -> Captured:
    """Capture ``model`` with ``torch.export.export(strict=False)`` on the example inputs."""
    program = torch.export.export(model, args, kwargs, strict=False)
    graph = program.graph
    signature = program.graph_signature
    param_names = set(signature.inputs_to_parameters)
    param_nodes = {n for n in graph.nodes if n.op == "placeholder" and n.name in param_names}
    buffer_names = set(signature.inputs_to_buffers)
    buffer_nodes = {n for n in graph.nodes if n.op == "placeholder" and n.name in buffer_names}
    return Captured(graph, "export", param_nodes, set(), {}, True, buffer_nodes)
