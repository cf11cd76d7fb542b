"""A no-op post-grad pass whose ``uuid()`` puts mhc_fx's own source into the cache keys.

Inductor's FX graph cache and AOTAutograd's cache do not hash lowering,
decomposition or backward functions. A `CustomGraphPass` with a stable uuid over
the files that define mix's numerics (ops, projections, jacobians, site_mix, the backend) is part of
both keys, so an edited decomposition never reuses a stale compiled graph.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

_PACKAGE = Path(__file__).resolve().parent.parent
_SOURCES = tuple(
    str(p)
    for p in sorted(
        [
            *(_PACKAGE / name for name in ("ops.py", "projections.py", "jacobians.py", "site_mix.py")),
            *(_PACKAGE / "backend").glob("*.py"),
        ]
    )
)


class MixCacheKey(CustomGraphPass):
    """Changes nothing in the graph; its uuid hashes mhc_fx's numerics-defining sources."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        return None

    def uuid(self) -> bytes:
        return get_hash_for_files(_SOURCES)


class PassChain(CustomGraphPass):
    """Runs a user's custom pass, then ours; its uuid combines both."""

    def __init__(self, *passes: CustomGraphPass) -> None:
        self.passes = passes

    def __call__(self, graph: torch.fx.Graph) -> None:
        for p in self.passes:
            p(graph)

    def uuid(self):
        ids = [p.uuid() if hasattr(p, "uuid") else None for p in self.passes]
        return None if any(i is None for i in ids) else repr(ids).encode()
