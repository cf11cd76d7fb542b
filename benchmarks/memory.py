"""Peak tensor memory of one call on CPU, from the profiler's memory timeline.

CPU tensors have no allocator statistics (``torch.cuda.max_memory_allocated``
has no CPU twin) and a process's max RSS also holds the compiler's own memory.
So this runs the call once under ``torch.profiler`` with ``profile_memory=True``
and replays the allocation timeline (``_memory_profile().timeline``: every
tensor storage created and destroyed, eager or Inductor-generated code alike).

What it measures: the peak, over the call, of the bytes of tensor storage
allocated *during* the call and still alive (activations, gradients, optimizer
temporaries, mixing history), on top of what was alive before it (parameters,
optimizer state), which is reported separately as ``preexisting``. Private
profiler API (torch 2.13); the call runs with profiling overhead, so it is
never one of the timed calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action


@dataclasses.dataclass(frozen=True)
class PeakMemory:
    """Bytes: the peak allocated during one call, and what was alive before it."""

    peak_bytes: int
    preexisting_bytes: int

    def to_dict(self) -> dict:
        return {"peak_mb": self.peak_bytes / 2**20, "preexisting_mb": self.preexisting_bytes / 2**20}


def peak_memory(fn: Callable[[], object]) -> PeakMemory:
    """Run ``fn`` once under the memory profiler and return its peak live tensor bytes."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = preexisting = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.PREEXISTING:
            preexisting += size
        elif action == Action.CREATE:
            live += size
            peak = max(peak, live)
        elif action == Action.DESTROY:
            live -= size
    return PeakMemory(peak, preexisting)
