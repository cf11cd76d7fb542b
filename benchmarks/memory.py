"""Peak tensor memory of one call on CPU, from the profiler's allocation events.

CPU tensors have no allocator statistics (``torch.cuda.max_memory_allocated``
has no CPU twin), and a process's max RSS also holds the compiler's own memory.
So this runs the call once under ``torch.profiler`` with ``profile_memory=True``:
the CPU allocator then reports every allocation and free (eager kernels and
Inductor-generated code alike), and replaying them in time order gives the
bytes alive at each moment.

What it measures: the peak, over the call, of the tensor bytes allocated
*during* the call and not yet freed (activations, gradients, optimizer
temporaries, mixing history), on top of what was alive before it (parameters,
optimizer state). The call runs with profiling overhead, so it is never one of
the timed calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile


@dataclasses.dataclass(frozen=True)
class PeakMemory:
    """The most bytes alive at once among those allocated during one call."""

    peak_bytes: int

    def to_dict(self) -> dict:
        return {"peak_mb": self.peak_bytes / 2**20}


def _allocations(nodes, out: list) -> list:
    """(time, signed size) of every allocation event in a profiler event tree."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            out.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    return out


def peak_memory(fn: Callable[[], object]) -> PeakMemory:
    """Run ``fn`` once under the profiler and return the peak of its live allocated bytes."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for _, size in sorted(_allocations(prof.profiler.kineto_results.experimental_event_tree(), [])):
        live += size
        peak = max(peak, live)
    return PeakMemory(peak)
