"""CUDA-event timing, interleaved and repeated; CUDA-graph replay; rotating input sets."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict, device: torch.device, *, rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each zero-argument callable, interleaved over ``rounds``."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():  # warm up
        fn()
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(reps):
                    fns[name]()
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                begin = time.perf_counter()
                for _ in range(reps):
                    fns[name]()
                seconds = time.perf_counter() - begin
            samples[name].append(seconds / reps)
    return {name: statistics.median(s) for name, s in samples.items()}


def graphed(fn, calls: int):
    """(replay, calls): ``fn`` called ``calls`` times, captured once in a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2 * calls):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay, calls


def rotating(fn, sets):
    state = {"i": 0}

    def call():
        (branch, *history), theta = sets[state["i"] % len(sets)]
        state["i"] += 1
        return fn(branch, history, theta)

    return call
