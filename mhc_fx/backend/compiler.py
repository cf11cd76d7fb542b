"""The ``"mhc"`` backend: Inductor with ``mix`` decomposed so it fuses with its neighbours.

Per site, Dynamo's graph holds the projection of the K logits (a few tiny aten
ops) and one ``mhc_fx::mix`` call. The backend hands Inductor a decomposition
table in which ``mix`` is `mix_reference` (plain mul/add), so AOTAutograd traces
the forward as pointwise ops, and the backward from mix's registered autograd
formula (also plain torch ops). Raising ``unroll_reductions_threshold`` above the
largest window turns the K-sized reductions of the projection into unrolled
pointwise code, which Inductor inlines into the site's one fused kernel.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._inductor import config as inductor_config
from torch._inductor.compile_fx import compile_fx
from torch._inductor.decomposition import select_decomp_table

from ..ops import mix_op, mix_reference
from .cache_key import MixCacheKey, PassChain

#: Windows up to this size have their projection unrolled into the fused kernel.
MAX_UNROLLED_WINDOW = 16

_OUR_OPTIONS = ("unroll_window", "inline_projection")

#: With ``inline_projection``: Inductor's GPU limits on how much pointwise work it inlines
#: into a consumer, raised so that a site's projection lands in its mixing kernel.
_INLINE_LIMITS = {"realize_opcount_threshold": 1000, "realize_reads_threshold": 1000}


def _validate_options(options: dict[str, Any] | None, device_type: str) -> tuple[dict[str, Any], int]:
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    options = dict(options)
    window = options.pop("unroll_window", MAX_UNROLLED_WINDOW)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"options['unroll_window'] must be an int >= 1, got {window!r}")
    inline = options.pop("inline_projection", "auto")
    if inline == "auto":
        inline = device_type != "cpu"
    if not isinstance(inline, bool):
        raise ValueError(f"options['inline_projection'] must be True, False or 'auto', got {inline!r}")
    if inline:
        options = {**_INLINE_LIMITS, **options}
    known = set(inductor_config._config.keys()) if hasattr(inductor_config, "_config") else None
    for key in options:
        if known is not None and key not in known:
            raise ValueError(
                f"options key {key!r} is neither an Inductor config option nor one of mhc's {list(_OUR_OPTIONS)}"
            )
    return options, window


class _DecompositionTable(dict):
    """The table, pickled by reference: Inductor hashes its compile kwargs (this table
    among them) into the FX-graph cache key, and the table's values (aten's builtin
    functions) do not pickle. Its contents are keyed by `MixCacheKey` instead."""

    def __reduce__(self):
        return (decompositions, ())


def decompositions() -> dict:
    """Inductor's decomposition table with ``mhc_fx::mix`` decomposed into plain ops."""
    return _DecompositionTable({**select_decomp_table(), mix_op: mix_reference})


def config_patches(
    mode: str | None = None, options: dict[str, Any] | None = None, device_type: str = "cpu"
) -> dict[str, Any]:
    """The Inductor config the backend compiles under (mode and user options folded in) for
    a graph on ``device_type`` (``"cpu"``, ``"cuda"``, ...: decides ``inline_projection="auto"``)."""
    user, window = _validate_options(options, device_type)
    patches: dict[str, Any] = {}
    if mode is not None:
        patches.update(torch._inductor.list_mode_options(mode))
    patches.update(user)
    threshold = max(
        int(patches.get("unroll_reductions_threshold", inductor_config.unroll_reductions_threshold)), window + 1
    )
    patches["unroll_reductions_threshold"] = threshold
    existing = patches.get("post_grad_custom_post_pass", inductor_config.post_grad_custom_post_pass)
    patches["post_grad_custom_post_pass"] = PassChain(existing, MixCacheKey()) if existing else MixCacheKey()
    return patches


def mhc_backend(
    gm: torch.fx.GraphModule, example_inputs, *, mode: str | None = None, options: dict[str, Any] | None = None
):
    """``torch.compile(model, backend="mhc", mode=..., options=...)``: Inductor plus mix fusion.

    ``mode`` is one of Inductor's modes (``"default"``, ``"reduce-overhead"``,
    ``"max-autotune"``, ...); ``options`` are Inductor config options plus
    ``unroll_window`` (the largest window whose projection is unrolled, default 16) and
    ``inline_projection`` (``"auto"``, the default: on for graphs on a GPU, off on the CPU).
    On, Inductor's GPU inlining limits are raised so that each site's projection is
    computed inside its mixing kernel instead of in 1-2 small kernels of its own (on an
    H100: one site at 99-103% of copy bandwidth instead of 88%; the GPT training step
    +5.7% over residual instead of +7.2%, docs/benchmarks.md). The limits apply to the
    whole compiled graph and roughly double its compile time; ``False`` restores them.
    It never creates parameters and never changes numerics.
    """
    if mode == "default":
        mode = None
    patches = config_patches(mode, options, _device_type(example_inputs))
    return compile_fx(gm, example_inputs, decompositions=decompositions(), config_patches=patches)


def _device_type(example_inputs) -> str:
    """The graph's device: the first non-CPU tensor input's, else ``"cpu"``."""
    for value in example_inputs:
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            return value.device.type
    return "cpu"
