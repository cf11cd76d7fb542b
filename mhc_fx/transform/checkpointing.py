"""Activation checkpointing written in a converted model's own code (and Hugging Face's).

Any non-reentrant checkpoint region replays the scope it saw (`replay`); a call
``checkpoint(fn, ...)`` written in a rewritten forward additionally runs ``fn`` as if it
were a rewritten forward (`_ScopedCall`), so that additions written directly in ``fn``
(a lambda in the forward) are replayed too. Reentrant checkpointing is refused with a
clear error: its recompute sees only the region's explicit inputs, so the older states a
site mixes would get no gradient.
"""

from __future__ import annotations

import torch.utils.checkpoint

from .runtime import SiteRuntime, runtime_of


def _check_not_reentrant(inner, kwargs: dict) -> None:
    keywords = {**(getattr(inner, "keywords", None) or {}), **kwargs}
    if keywords.get("use_reentrant", True):  # torch's default when it is not passed
        raise NotImplementedError(
            "mhc_fx: reentrant checkpointing cannot see the history a converted block reads; pass "
            "use_reentrant=False (Hugging Face: gradient_checkpointing_kwargs={'use_reentrant': False})"
        )


class _ScopedCall:
    """``fn`` run inside the call's scope, like a rewritten forward."""

    def __init__(self, runtime: SiteRuntime, fn) -> None:
        self.runtime, self.fn = runtime, fn

    def __call__(self, *args, **kwargs):
        token = self.runtime.open()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.runtime.close(token)


class CheckpointGuard:
    """Wraps a checkpoint function (a Hugging Face layer's ``_gradient_checkpointing_func``):
    refuses reentrant checkpointing inside a converted model's call."""

    def __init__(self, inner, runtime: SiteRuntime) -> None:
        self.inner = inner
        self.runtime = runtime

    def __call__(self, fn, *args, **kwargs):
        if self.runtime.scope is not None:
            _check_not_reentrant(self.inner, kwargs)
        return self.inner(fn, *args, **kwargs)


def site_checkpoint(module, func, *args, **kwargs):
    """A call ``...checkpoint(...)`` written in a rewritten forward of ``module``: checked and scoped
    when ``func`` is ``torch.utils.checkpoint.checkpoint``."""
    rt = runtime_of(module)
    if rt is None or rt.scope is None or rt.tags is not None or func is not torch.utils.checkpoint.checkpoint:
        return func(*args, **kwargs)
    _check_not_reentrant(func, kwargs)
    fn, *rest = args
    return func(_ScopedCall(rt, fn), *rest, **kwargs)
