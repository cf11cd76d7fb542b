"""Sites whose residual stream is a DTensor (tensor parallelism with sequence parallel).

Under a tensor-parallel plan the residual stream reaching a site is either

* a plain tensor holding the whole stream on every rank (no sequence parallel): the site
  runs as in one process and nothing here is involved;
* a DTensor (sequence parallel with ``use_local_output=False`` on the modules that produce
  the stream, typically ``Shard(1)``): `site_mix` mixes it with DTensor ops. The logits
  stay plain, replicated ``nn.Parameter`` s; the projected alpha enters the DTensor world
  through ``DTensor.from_local(alpha, mesh, [Replicate()])``, whose backward all-reduces
  the rank-local partial sums of the weight gradient, so every rank gets the gradient of
  the whole sequence;
* a plain tensor holding this rank's *sequence shard* (sequence parallel with the
  default ``use_local_output=True``, as torch's TP tutorial and torchtitan write it):
  the forward is right (mixing is pointwise over tokens) but each rank's gradient of the
  plain logits would be the sum over its own tokens only. The site cannot tell such a
  shard from a whole stream, so `sequence_parallel_module` looks for modules that
  ``SequenceParallel`` distributed and `check_plain_stream` raises instead of training
  on partial gradients.

`torch.ops.mhc_fx.mix` gets a DTensor sharding rule (`register_mix_sharding`): pointwise
over the branch and the states (all replicated, or all sharded on one dim), the weights
replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..config import MHCConfig
from ..ops import mix
from ..projections import project_logits

_DOC = "docs/distributed.md#tensor-parallelism"


def _dtensor_class():
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_distributed(branch: Tensor, window: Sequence[Tensor]) -> bool:
    """Whether any of the site's tensors is a DTensor (plain tensors answer without an import)."""
    if all(type(t) is Tensor or type(t) is nn.Parameter for t in (branch, *window)):
        return False
    cls = _dtensor_class()
    return cls is not None and any(isinstance(t, cls) for t in (branch, *window))


@functools.cache
def register_mix_sharding() -> None:
    """Registers the DTensor sharding rule of ``mhc_fx.mix`` (once per process)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.experimental import register_sharding

    @register_sharding(torch.ops.mhc_fx.mix.default)
    def _mix_sharding(branch, history, weights):
        # One placement list per strategy: [output, branch, state_0 .. state_{K-1}, weights].
        n = len(history)
        layouts = [Replicate()]
        if weights.ndim == 1:  # one weight per state: every element of the states is mixed alike
            layouts += [Shard(d) for d in range(branch.ndim)]
        return [([p], [p, *([p] * n), Replicate()]) for p in layouts]


def site_mix(
    name: str, branch: Tensor, window: Sequence[Tensor], theta: Tensor, config: MHCConfig, noise: Tensor | None
) -> Tensor:
    """``mix(branch, window, P(theta))`` when the branch and the states are DTensors."""
    from torch.distributed.tensor import DTensor, Replicate

    tensors = (branch, *window)
    plain = [k for k, t in enumerate(tensors) if not isinstance(t, DTensor)]
    if plain:
        which = ", ".join("the branch" if k == 0 else f"history state {k - 1}" for k in plain)
        raise TypeError(
            f"mhc_fx site {name!r}: {which} of {len(window)} history states are plain tensors while the others are "
            "DTensors; the residual stream must be one or the other at every site of a chain (keep it a DTensor: "
            f"use_local_output=False on the parallel styles that produce it; {_DOC})"
        )
    mesh = branch.device_mesh
    if any(t.device_mesh != mesh for t in window):
        raise ValueError(f"mhc_fx site {name!r}: the branch and the history states live on different device meshes")
    register_mix_sharding()
    alpha = project_logits(theta, config, noise)
    if isinstance(alpha, DTensor):  # logits the user distributed: they must be whole on every rank
        if alpha.device_mesh != mesh or not all(p.is_replicate() for p in alpha.placements):
            raise ValueError(
                f"mhc_fx site {name!r}: its mixing logits are a DTensor with placements {alpha.placements}; "
                f"keep the mhc.* parameters plain (or replicated on the stream's mesh); {_DOC}"
            )
    else:
        # Replicated: every rank holds the same logits. The backward of from_local turns the
        # rank-local (Partial) weight gradient into the full one (an all-reduce of K numbers).
        alpha = DTensor.from_local(alpha, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return mix(branch, window, alpha)


def sequence_parallel_module(root: nn.Module) -> str | None:
    """The path of a module in ``root`` that ``SequenceParallel`` distributed, or None.

    Recognised as torch's ``distribute_module`` marks it (``_distribute_module_applied``)
    while none of its own parameters is sharded (``SequenceParallel`` replicates the norm's
    parameters; Colwise/RowwiseParallel shard the weight). Only looked for while
    ``torch.distributed`` is initialized."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    cls = _dtensor_class()
    for path, module in root.named_modules():
        if module.__dict__.get("_distribute_module_applied") and all(
            isinstance(p, cls) and all(pl.is_replicate() for pl in p.placements)
            for p in module.parameters(recurse=False)
        ):
            return path
    return None


def check_plain_stream(name: str, sequence_parallel: str | None, stream: Tensor, theta: Tensor) -> None:
    """Raises when a site is about to train on a plain sequence shard (see the module docstring)."""
    if sequence_parallel is None or not (torch.is_grad_enabled() and theta.requires_grad):
        return
    if is_distributed(stream, ()):
        return
    raise RuntimeError(
        f"mhc_fx site {name!r}: sequence parallel is not supported with a plain-tensor residual stream. "
        f"The model uses SequenceParallel (on {sequence_parallel!r}), so the plain tensor reaching this site is "
        "presumably this rank's sequence shard, and the gradient of the mixing weights (plain, replicated "
        "parameters) would be the sum over this rank's tokens only. Keep the residual stream a DTensor instead: "
        "use_local_output=False on the styles that produce it (the embedding's RowwiseParallel(..., "
        "output_layouts=Shard(1)) and each block's output projections RowwiseParallel(output_layouts=Shard(1))); "
        f"{_DOC}"
    )
