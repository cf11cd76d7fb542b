"""Activation checkpointing that replays a converted block with the history it saw.

A checkpointed block is recomputed during backward, after the forward call (and its
history scope) has ended. `CheckpointWithHistory` wraps any checkpoint function: it
snapshots the scope when the block first runs and, on the recompute, runs the block
in a private scope restored from that snapshot. Non-reentrant checkpointing only: the
reentrant kind runs its first forward without autograd, which would cut the states the
block pushes into the history from the graph.
"""

from __future__ import annotations

import torch.utils.checkpoint

from .runtime import SiteRuntime, runtime_of


class CheckpointWithHistory:
    """Wraps a checkpoint function (torch's, or a Hugging Face layer's
    ``_gradient_checkpointing_func``): the recompute in backward runs the block in a
    private scope restored from the history it saw in forward."""

    def __init__(self, inner, runtime: SiteRuntime) -> None:
        self.inner = inner
        self.runtime = runtime

    def __call__(self, fn, *args, **kwargs):
        rt = self.runtime
        if rt.depth == 0:
            return self.inner(fn, *args, **kwargs)
        keywords = {**(getattr(self.inner, "keywords", None) or {}), **kwargs}
        if keywords.get("use_reentrant", True):  # torch's default when it is not passed
            raise NotImplementedError(
                "mhc_fx: reentrant checkpointing cannot see the history a converted block reads; pass "
                "use_reentrant=False (Hugging Face: gradient_checkpointing_kwargs={'use_reentrant': False})"
            )
        state = rt.snapshot()
        calls = []

        def run(*a, **k):
            calls.append(None)
            if len(calls) == 1:  # the forward itself: the live scope
                return fn(*a, **k)
            saved = (rt.depth, rt.counters, rt.histories)
            rt.depth = 1
            rt.restore(state)
            try:
                return fn(*a, **k)
            finally:
                rt.depth, rt.counters, rt.histories = saved

        return self.inner(run, *args, **kwargs)


def site_checkpoint(module, func, *args, **kwargs):
    """A call ``...checkpoint(...)`` written in a rewritten forward of ``module``: routed
    through `CheckpointWithHistory` when ``func`` is ``torch.utils.checkpoint.checkpoint``."""
    rt = runtime_of(module)
    if rt is None or rt.depth == 0 or rt.tags is not None or func is not torch.utils.checkpoint.checkpoint:
        return func(*args, **kwargs)
    return CheckpointWithHistory(func, rt)(*args, **kwargs)
