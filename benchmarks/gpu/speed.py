"""Stages 3 and 4: one mixing site against a copy; the GPT training step and inference forward."""

from __future__ import annotations

import copy
import time
from functools import partial
from typing import TYPE_CHECKING

import torch

import mhc_fx
from mhc_fx.projections import mixing_weights

from ..progress import log
from .models import gpt_inputs, loss_of
from .timing import graphed, rotating, sync, timed

if TYPE_CHECKING:
    from .run import Run


def _site(branch, history, theta, config=mhc_fx.MHCConfig(mode="mhc")):
    return mhc_fx.mix(branch, history, mixing_weights(theta, config))


def site(run: Run) -> dict:
    shape = (2, 64, 64) if run.tiny else (8, 512, 768)
    dtypes = (torch.float32,) if run.tiny else (torch.float32, torch.bfloat16)
    ks = (4,) if run.tiny else (2, 4, 8)
    dtypes = [d for d in dtypes if run.only.search(f"site {str(d).removeprefix('torch.')}")]
    ks = [k for k in ks if run.only.search(f"site K={k}")]
    rounds, reps = (2, 2) if run.tiny else (9, 20)
    l2_bytes = 50 * 2**20 if run.device.type == "cuda" else 8 * 2**20
    rows = []
    for dtype in dtypes:
        for k in ks:
            tensor_bytes = torch.Size(shape).numel() * dtype.itemsize
            n_sets = max(1, -(-4 * l2_bytes // ((k + 1) * tensor_bytes)))
            sets = [
                (
                    [torch.randn(shape, device=run.device, dtype=dtype) for _ in range(k + 1)],
                    torch.randn(k, device=run.device) * 0.3,
                )
                for _ in range(n_sets)
            ]
            torch._dynamo.reset()
            variants = {
                "eager": _site,
                "inductor_opaque": torch.compile(_site, dynamic=False),
                "backend_mhc": torch.compile(_site, backend="mhc", dynamic=False),
                "backend_mhc_no_inline": torch.compile(
                    _site, backend="mhc", dynamic=False, options={"inline_projection": False}
                ),
            }
            fns = {name: rotating(fn, sets) for name, fn in variants.items()}
            big = [torch.empty(((k + 2) // 2) * tensor_bytes, dtype=torch.uint8, device=run.device) for _ in range(2)]
            fns["copy"] = partial(big[1].copy_, big[0])
            ref = _site(sets[0][0][0], sets[0][0][1:], sets[0][1]).float()
            errors = {
                name: (fn(sets[0][0][0], sets[0][0][1:], sets[0][1]).float() - ref).abs().max().item()
                for name, fn in variants.items()
            }
            times = timed(fns, run.device, rounds=rounds, reps=reps)
            if run.device.type == "cuda":  # the same calls replayed from a CUDA graph: no CPU launch cost
                replays = {}
                for name, fn in fns.items():
                    try:
                        replays[name + " (graph)"] = graphed(fn, len(sets) if name != "copy" else 1)
                    except Exception as err:  # noqa: BLE001 - recorded, the others still run
                        log(f"  {name}: CUDA graph capture failed: {type(err).__name__}: {err}"[:300])
                graph_times = timed({n: r for n, (r, _) in replays.items()}, run.device, rounds=rounds, reps=reps)
                times.update({n: t / replays[n][1] for n, t in graph_times.items()})
            copy_gb_s = 2 * big[0].numel() / times["copy"] / 1e9
            copy_graph_gb_s = 2 * big[0].numel() / times.get("copy (graph)", times["copy"]) / 1e9
            for name, t in times.items():
                moved = 2 * big[0].numel() if name.startswith("copy") else (k + 2) * tensor_bytes
                copy_gb_s = copy_graph_gb_s if name.endswith("(graph)") else copy_gb_s
                gb_s = moved / t / 1e9
                rows.append(
                    {
                        "dtype": str(dtype).removeprefix("torch."),
                        "K": k,
                        "variant": name,
                        "time_us": t * 1e6,
                        "gb_s": gb_s,
                        "of_copy": gb_s / copy_gb_s,
                        "max_abs_err": errors.get(name.removesuffix(" (graph)"), 0.0),
                    }
                )
                log(
                    f"  {rows[-1]['dtype']:8s} K={k} {name:26s} {t * 1e6:8.1f} us {gb_s:7.1f} GB/s "
                    f"{gb_s / copy_gb_s:5.0%} of copy"
                )
            del sets, big, fns, variants
    return {"shape": list(shape), "bytes": "(K + 2) x tensor; copy: read + write of (K + 2)/2 tensors", "rows": rows}


def _train_plan():
    """(label, model kind, compile kwargs or None for eager), most important first."""
    return [
        ("residual / inductor", "residual", {}),
        ("mhc / backend mhc", "mhc", {"backend": "mhc"}),
        ("mhc / backend mhc no inline", "mhc", {"backend": "mhc", "options": {"inline_projection": False}}),
        ("residual / eager", "residual", None),
        ("mhc / eager", "mhc", None),
        ("mhc / inductor (mix opaque)", "mhc", {}),
    ]


def _with_mode(kw: dict, mode: str) -> dict:
    """torch.compile kwargs in ``mode`` (torch.compile takes mode or options, not both)."""
    if "options" not in kw:
        return {**kw, "mode": mode}
    return {**kw, "options": {**torch._inductor.list_mode_options(mode), **kw["options"]}}


def train(run: Run) -> dict:
    """The GPT step at each width of ``run.dims`` (default: 384, or 64 with ``--tiny``)."""
    dims = run.dims or ([64] if run.tiny else [384])
    return {"dims": {str(dim): _train_at(run, dim) for dim in dims}}


def _train_at(run: Run, dim: int) -> dict:
    layers, seq, batch = (2, 32, 2) if run.tiny else (12, 256, 8)
    rounds, reps = (2, 1) if run.tiny else (7, 5)
    log(f"  GPT {layers} layers, d {dim}, B {batch}, T {seq}")
    base, idx, targets = gpt_inputs(layers, dim, seq, batch, run.device)
    plan = [row for row in _train_plan() if run.only.search(f"train {row[0]}")]
    if run.compile_mode is not None:  # compiled variants only, in that mode
        plan = [
            (f"{label} [{run.compile_mode}]", kind, _with_mode(kw, run.compile_mode))
            for label, kind, kw in plan
            if kw is not None and "opaque" not in label
        ]
    rows = []
    for task in run.tasks:
        fns, stats = {}, {}
        for label, kind, kw in plan:
            if run.left_s() < 60 and fns:
                stats[label] = {"status": "skipped: out of time"}
                continue
            model = copy.deepcopy(base) if kind == "residual" else mhc_fx.convert(base, mode=kind)
            runnable = model if kw is None else torch.compile(model, **kw)
            fn = _train_step(model, runnable, idx, targets) if task == "train" else _infer_step(model, runnable, idx)
            sync(run.device)
            begin = time.perf_counter()
            fn()
            sync(run.device)
            first = time.perf_counter() - begin
            stats[label] = {"first_call_s": first, "step_peak_mb": _step_peak_mb(fn, run.device)}
            fns[label] = fn
            log(f"  {task} {label}: first call {first:.1f} s")
        for label, t in timed(fns, run.device, rounds=rounds, reps=reps).items():
            stats[label]["time_ms"] = t * 1e3
        for label, s in stats.items():
            ref = "residual / eager" if label.endswith("eager") else plan[0][0]
            if "time_ms" in s and "time_ms" in stats.get(ref, {}):
                s["overhead_vs_" + ref] = s["time_ms"] / stats[ref]["time_ms"] - 1
            rows.append({"task": task, "variant": label, **s})
            log(
                f"  {task} {label:36s} {s.get('time_ms', float('nan')):8.2f} ms "
                f"overhead {next((v for k, v in s.items() if k.startswith('overhead')), float('nan')):+.1%}"
            )
    return {
        "model": dict(layers=layers, dim=dim, seq=seq, batch=batch, history=4),
        "compile_mode": run.compile_mode,
        "rows": rows,
    }


def _step_peak_mb(fn, device: torch.device) -> float | None:
    """MB allocated at the peak of one call on top of what was alive before it (the other
    variants' parameters and optimizer state stay out): comparable across variants."""
    if device.type != "cuda":
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def _train_step(model, runnable, idx, targets):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=next(model.parameters()).is_cuda)
    model.train()

    def step():
        torch.compiler.cudagraph_mark_step_begin()
        loss_of(runnable, idx, targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _infer_step(model, runnable, idx):
    def step():
        torch.compiler.cudagraph_mark_step_begin()
        model.eval()
        with torch.no_grad():
            runnable(idx)

    return step
