"""Interleaved, repeated timing with the median reported.

All candidates of one comparison are timed in the same process, one sample of
each in turn (the order rotates every round), so slow drifts of the machine
(other processes, frequency changes) hit every candidate alike. Before the
first round it waits (within the run's budget) for other processes to quiet
down, and it records the share of the CPUs they used during the rounds. Nothing
here compares a time with a threshold. As in ``timeit``, Python's cyclic
garbage collector is off while a sample runs (collected before the rounds), so
a collection of an earlier candidate's garbage is not charged to another.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Mapping

from .contention import QUIET, OtherShare


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: the median over rounds, plus the spread."""

    median_s: float
    min_s: float
    max_s: float
    rounds: int
    calls_per_round: int
    #: fraction of all CPU time that other processes used during the rounds (None: unknown)
    other_cpu_share: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def time_call(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def calls_for(fn: Callable[[], object], min_sample_s: float) -> int:
    """How many calls make one sample last at least ``min_sample_s`` (one call of ``fn`` is made)."""
    once = max(time_call(fn), 1e-6)
    return max(1, int(min_sample_s / once + 0.999))


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int = 1,
    min_sample_s: float = 0.0,
) -> dict[str, Timing]:
    """Time every candidate ``rounds`` times, alternating between them.

    Args:
        candidates: name -> zero-argument callable (already compiled / warmed if needed).
        rounds: samples per candidate; the median of them is reported.
        warmup: untimed calls of each candidate before the first round.
        min_sample_s: a sample repeats the call until it lasts at least this long
            (the per-call time is the sample divided by the calls), for fast kernels.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    calls = {name: calls_for(candidates[name], min_sample_s) if min_sample_s > 0 else 1 for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    QUIET.wait()
    with OtherShare() as other:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                samples[name].append(_sample(candidates[name], calls[name]))
    return {
        name: Timing(statistics.median(s), min(s), max(s), rounds, calls[name], other.share)
        for name, s in samples.items()
    }


def _sample(fn: Callable[[], object], calls: int) -> float:
    """Seconds per call over ``calls`` calls, with the garbage collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls
    finally:
        if enabled:
            gc.enable()
