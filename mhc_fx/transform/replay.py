"""Replaying a checkpointed block with the scope it saw, however checkpointing was applied.

Non-reentrant activation checkpointing recomputes a region during backward: after its
call's scope has closed, and on a GPU in one of autograd's threads. Every form of it (a
``checkpoint(...)`` call in the model's code, Hugging Face's, ``checkpoint_wrapper`` /
``apply_activation_checkpointing``, torch's composable ``checkpoint(module)``, a forward
replaced by ``partial(checkpoint, block.forward)``, selective AC) runs the region under
torch's saved-tensor hooks, which hold the region's checkpoint *frame*; the recompute runs
under hooks that point back at the same frame. So the first rewritten forward entered inside
a region leaves a snapshot of the call's scope on the frame, and the recompute, entering
that forward again with no call open, restores it.

The snapshot lives on the frame: it goes when autograd frees the region's saved state
(after the backward), and a region run twice (shared weights) has two frames. Eager only:
under ``torch.compile`` checkpointing is a graph region the compiler recomputes itself.

The frame is read from the closures of torch's hooks (torch.utils.checkpoint internals,
checked on torch 2.11 and 2.13; ``tests/test_checkpointing.py`` fails if they change).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

ATTR = "_mhc_fx_scopes"
_FORWARD_HOOK = "_checkpoint_hook.__init__.<locals>.pack_hook"
_RECOMPUTE_HOOK = "_recomputation_hook.__init__.<locals>.pack_hook"


def in_backward() -> bool:
    """Whether this thread is running autograd's backward (where checkpoints recompute)."""
    return torch._C._current_graph_task_id() != -1


def _closure_value(fn, name: str):
    try:
        return fn.__closure__[fn.__code__.co_freevars.index(name)].cell_contents
    except (ValueError, TypeError, IndexError, AttributeError):
        return None


def checkpoint_frame(recomputing: bool) -> Any:
    """The checkpoint frame of the innermost non-reentrant checkpoint region running now (its
    forward, or with ``recomputing`` its recompute), or None outside one."""
    hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if hooks is None:
        return None
    pack = inspect.unwrap(hooks[0])
    if getattr(pack, "__qualname__", None) != (_RECOMPUTE_HOOK if recomputing else _FORWARD_HOOK):
        return None
    if not recomputing:
        return _closure_value(pack, "frame")
    ref = _closure_value(pack, "target_frame_ref")
    return ref() if ref is not None else None


def remember(runtime: Any, scope: Any) -> None:
    """A forward entered inside a call: if it is the first one in a checkpoint region, leave the
    scope it sees on the region's frame."""
    if not torch.is_grad_enabled():
        return
    frame = checkpoint_frame(recomputing=False)
    if frame is None:
        return
    scopes = frame.__dict__.setdefault(ATTR, {})
    if id(runtime) not in scopes:
        scopes[id(runtime)] = scope.snapshot()


def recall(runtime: Any) -> tuple[dict, dict] | None:
    """A forward entered with no call open: the snapshot its checkpoint region left, when this
    is the region's recompute."""
    if not in_backward():
        return None
    frame = checkpoint_frame(recomputing=True)
    scopes = frame.__dict__.get(ATTR) if frame is not None else None
    return scopes.get(id(runtime)) if scopes else None
