"""3. End to end: one training step and one inference forward of a GPT, every variant and mode.

Execution modes: ``eager``, ``inductor`` (``torch.compile(model)``) and ``mhc``
(``torch.compile(model, backend="mhc")``). Per mode, every variant is built
fresh from the same initial weights, then per task:

1. compiled modes only: the first call (compile plus one step), its time and the
   number of graphs Dynamo produced;
2. one call under the memory profiler (see `memory`), which also warms up;
3. the timed calls, interleaved across variants, median reported.

A training step is forward, cross-entropy, backward, ``AdamW.step()`` and
``zero_grad(set_to_none=True)``. An inference forward runs in ``eval()`` under
``torch.no_grad()``. Compile time is the first call minus the median step.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.nn import functional as F

from . import models, peers
from .memory import peak_memory
from .progress import log
from .timing import interleaved, time_call

MODES = {"eager": None, "inductor": "inductor", "mhc": "mhc"}
TASKS = ("train", "infer")


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def train_step(model, optimizer, idx, targets):
    """Forward, loss, backward, optimizer step, gradients freed."""
    logits = model(idx)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def infer_step(model, idx):
    """One forward without autograd."""
    with torch.no_grad():
        model(idx)


class Variant:
    """A built model, its compiled form for one mode, and its optimizer."""

    def __init__(self, model, backend):
        self.model = model
        self.runnable = model if backend is None else torch.compile(model, backend=backend)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(self, task, idx, targets):
        """A zero-argument callable running one step of ``task``."""
        self.model.train(task == "train")
        if task == "train":
            return lambda: train_step(self.runnable, self.optimizer, idx, targets)
        return lambda: infer_step(self.runnable, idx)


def _measure_task(variants, task, backend, idx, targets, rounds, min_sample_s) -> dict[str, dict]:
    """First call, memory, then interleaved timing of every variant for one task."""
    stats, fns = {}, {}
    for name, variant in variants.items():
        fn = variant.step(task, idx, targets)
        stats[name] = {}
        if backend is not None:
            before = _graphs()
            log(f"  {task} {name}: first call (compiling)")
            stats[name]["first_call_s"] = time_call(fn)
            stats[name]["graphs"] = _graphs() - before
        log(f"  {task} {name}: memory-profiled call")
        stats[name].update(peak_memory(fn).to_dict())
        fns[name] = fn
    log(f"  {task}: timing {len(fns)} variants x {rounds} rounds, interleaved")
    for name, timing in interleaved(fns, rounds=rounds, warmup=0, min_sample_s=min_sample_s).items():
        stats[name]["time_s"] = timing.median_s
        stats[name]["timing"] = timing.to_dict()
        if backend is not None:
            stats[name]["compile_s"] = stats[name]["first_call_s"] - timing.median_s
    return stats


def measure(
    size: models.GPTSize, *, history: int, streams: int, plan: dict, skipped: dict, rounds: dict, min_sample_s: float
) -> dict:
    """Section 3. ``plan``: mode -> variant names to run; ``skipped``: (mode, name) -> reason;
    ``rounds``: task -> timed rounds; ``min_sample_s``: repeat a step within a round until it lasts this long."""
    base = models.base_gpt(size)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, size.vocab, (size.batch, size.seq), generator=gen)
    targets = torch.randint(0, size.vocab, (size.batch, size.seq), generator=gen)
    rows = []
    for mode, names in plan.items():
        backend = MODES[mode]
        torch._dynamo.reset()
        log(f"end to end, mode {mode}: building {', '.join(names)}")
        variants, missing = {}, []
        for name in names:
            model = models.build(name, base, history=history, streams=streams)
            if model is None:
                missing.append(name)
            else:
                variants[name] = Variant(model, backend)
        for task in TASKS:
            stats = _measure_task(variants, task, backend, idx, targets, rounds[task], min_sample_s)
            baseline = stats["residual"]["time_s"]
            for name in names:
                row = {"mode": mode, "task": task, "model": name, "label": models.LABELS[name]}
                if name in missing:
                    rows.append({**row, "status": peers.NOT_INSTALLED})
                    continue
                s = stats[name]
                rows.append({**row, **s, "ratio_to_residual": s["time_s"] / baseline})
        del variants
    rows += [
        {"mode": mode, "task": task, "model": name, "label": models.LABELS[name], "status": reason}
        for task in TASKS
        for (mode, name), reason in skipped.items()
    ]
    return {
        "model": {**dataclasses.asdict(size), "history": history, "streams": streams},
        "state_mb": size.state_bytes() / 2**20,
        "history_window_mb": history * size.state_bytes() / 2**20,
        "rows": rows,
    }
