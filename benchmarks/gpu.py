"""The GPU checks of issues 5 and 6, as one short script for a lent GPU machine.

    python -m benchmarks.gpu --out DIR [--device cuda] [--budget-s 420] [--tiny]

Stages, each written to ``DIR/gpu.json`` as soon as it finishes (so a run cut off
by its time limit still leaves what it measured), each failure recorded with its
traceback instead of ending the run:

1. ``correctness``: a converted 2-layer GPT (mixing logits perturbed) in every mode,
   compiled with ``backend="mhc"`` (and ``inline_projection=False`` for mhc): forward
   and gradients against eager float32 and float64, TF32 off; 10 SGD steps compiled
   against eager.
2. ``kernels``: Triton kernel launches in the generated code (inference; training
   forward + backward) for the plain model under Inductor, and the converted one under
   ``backend="mhc"`` with and without ``inline_projection``; mixing kernels per site;
   no extern ``mix`` call.
3. ``site``: one site at (8, 512, 768), float32 / bfloat16, K = 2, 4, 8: eager op,
   default Inductor, ``backend="mhc"`` (with and without ``inline_projection``),
   against a device-to-device copy of the same bytes: time, GB/s, fraction of the
   copy's GB/s; on CUDA also with the calls replayed from a CUDA graph.
4. ``train``: the 12-layer GPT of the end-to-end benchmark, one AdamW training step
   and one inference forward, plain vs converted, per execution mode; time, the peak
   memory of one step above what was alive before it, first-call (compile) time.

Timings: CUDA events around ``reps`` calls, candidates interleaved, median of the
rounds; inputs rotate over enough sets to defeat the L2 cache. Nothing here is
asserted: the script prints and saves. ``--device cpu --tiny`` is the smoke test
that keeps it from rotting on machines with no GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

import mhc_fx
from mhc_fx.projections import mixing_weights
from tests.helpers import perturb_mixing
from tests.models.gpt import GPT

from .progress import log

#: A kernel launch in Inductor's wrapper code: Triton (``triton_x.run(``) or C++ (``cpp_fused_x(``).
LAUNCH = re.compile(r"^\s+(?:(triton_\w+)\.run|(cpp_fused_\w+))\(", re.M)
MODES = {
    "residual": {"mode": "residual"},
    "hc": {"mode": "hc"},
    "mhc": {"mode": "mhc"},
    "mhc_identity": {"mode": "mhc", "constraint": "identity"},
    "mhc_stochastic": {"mode": "mhc", "stochastic": True},
}
BACKENDS = {"mhc": {}, "mhc_no_inline": {"inline_projection": False}}  # the default inlines on a GPU


class Run:
    """Device, sizes, the time budget and the results file."""

    def __init__(self, device: str, tiny: bool, budget_s: float, out: Path, compile_mode: str | None = None) -> None:
        self.device = torch.device(device)
        self.compile_mode = compile_mode
        self.only = re.compile(".*")
        self.tiny = tiny
        self.deadline = time.perf_counter() + budget_s
        self.out = out
        self.results: dict = {"argv": sys.argv[1:], "environment": environment(self.device)}

    def left_s(self) -> float:
        return self.deadline - time.perf_counter()

    def stage(self, name: str, fn) -> None:
        if self.left_s() <= 0:
            self.results[name] = {"status": "skipped: out of time"}
        else:
            log(f"stage {name} ({self.left_s():.0f} s left)")
            try:
                self.results[name] = fn(self)
            except Exception:
                self.results[name] = {"status": "failed", "traceback": traceback.format_exc()[-4000:]}
                log(f"stage {name} failed:\n{self.results[name]['traceback']}")
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(self.results, indent=1, default=str))


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(name=props.name, memory_gb=props.total_memory / 2**30, capability=[props.major, props.minor])
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


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


def gpt_inputs(layers: int, dim: int, seq: int, batch: int, device, vocab: int = 65):
    torch.manual_seed(0)
    model = GPT(vocab=vocab, dim=dim, heads=max(1, dim // 64), layers=layers, block_size=seq).to(device)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    targets = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    return model, idx, targets


def loss_of(model, idx, targets):
    return F.cross_entropy(model(idx).flatten(0, 1).float(), targets.flatten())


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _forward_backward(model, runnable, idx, targets, seed: int):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = loss_of(runnable, idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def correctness(run: Run) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    layers, dim, seq, batch = (2, 32, 32, 2) if run.tiny else (2, 128, 64, 4)
    base, idx, targets = gpt_inputs(layers, dim, seq, batch, run.device)
    rows = []
    for mode, options in MODES.items():
        model = perturb_mixing(mhc_fx.convert(base, **options).to(run.device), 0.3)
        model.train()
        ref_loss, ref_grads = _forward_backward(model, model, idx, targets, seed=3)
        exact = copy.deepcopy(model).double()
        _, f64_grads = _forward_backward(exact, exact, idx, targets, seed=3)
        # stochastic: float64 draws other noise, so no float64 reference
        comparable = not options.get("stochastic", False)
        eager_vs_f64 = max(rel_diff(g, f64_grads[n]) for n, g in ref_grads.items()) if comparable else float("nan")
        for backend, backend_options in BACKENDS.items():
            if backend != "mhc" and mode != "mhc":
                continue  # inline_projection changes Inductor's inlining only: one mode shows it
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="mhc", options=backend_options, fullgraph=True)
            loss, grads = _forward_backward(model, compiled, idx, targets, seed=3)
            grad_diff = max(rel_diff(grads[n], g) for n, g in ref_grads.items())
            mixing_grad = max(
                (rel_diff(grads[n], g) for n, g in ref_grads.items() if n.startswith("mhc.")), default=0.0
            )
            compiled_vs_f64 = max(rel_diff(g, f64_grads[n]) for n, g in grads.items()) if comparable else float("nan")
            rows.append(
                {
                    "mode": mode,
                    "backend": backend,
                    "loss_rel_diff": rel_diff(loss, ref_loss),
                    "grad_rel_diff_max": grad_diff,
                    "mixing_grad_rel_diff_max": mixing_grad,
                    "grad_err_vs_float64_eager": eager_vs_f64,
                    "grad_err_vs_float64_compiled": compiled_vs_f64,
                }
            )
            log(
                f"  {mode:15s} {backend:11s} loss {rows[-1]['loss_rel_diff']:.1e} grads {grad_diff:.1e} "
                f"(vs float64: eager {eager_vs_f64:.1e}, compiled {compiled_vs_f64:.1e})"
            )
    return {
        "model": dict(layers=layers, dim=dim, seq=seq, batch=batch),
        "rows": rows,
        "training": _training_steps(base, idx, targets, run),
    }


def _training_steps(base, idx, targets, run: Run, steps: int = 10) -> dict:
    """10 SGD steps, eager vs backend="mhc": final loss and largest parameter difference."""
    finals = {}
    for label, backend in (("eager", None), ("mhc", "mhc")):
        model = perturb_mixing(mhc_fx.convert(base, mode="mhc").to(run.device), 0.3)
        runnable = model if backend is None else torch.compile(model, backend=backend)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        torch._dynamo.reset()
        for _ in range(steps):
            loss = loss_of(runnable, idx, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finals[label] = (loss.item(), {n: p.detach().clone() for n, p in model.named_parameters()})
    params = finals["eager"][1]
    return {
        "steps": steps,
        "loss_eager": finals["eager"][0],
        "loss_mhc": finals["mhc"][0],
        "param_rel_diff_max": max(rel_diff(finals["mhc"][1][n], p) for n, p in params.items()),
    }


def _codes(fn, *args) -> list[str]:
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    return run_and_get_code(fn, *args)[1]


def _kernel_names(code: str) -> list[str]:
    return [triton or cpp for triton, cpp in LAUNCH.findall(code)]


def kernels(run: Run) -> dict:
    layers, dim, seq, batch = (2, 32, 32, 2) if run.tiny else (2, 128, 64, 4)
    base, idx, targets = gpt_inputs(layers, dim, seq, batch, run.device)
    converted = perturb_mixing(mhc_fx.convert(base, mode="mhc"), 0.3).to(run.device)
    sites = sum(site.history >= 2 for site in mhc_fx.explain(converted).sites)
    variants = {
        "residual_inductor": (base, {}),
        "mhc_backend": (converted, {"backend": "mhc"}),
        "mhc_backend_no_inline": (converted, {"backend": "mhc", "options": {"inline_projection": False}}),
    }
    result = {"model": dict(layers=layers, dim=dim, seq=seq, batch=batch), "sites": sites, "rows": []}
    for name, (model, compile_kwargs) in variants.items():

        def infer(model=model, kw=compile_kwargs):
            with torch.no_grad():
                return torch.compile(model.eval(), **kw)(idx)

        def train(model=model, kw=compile_kwargs):
            loss_of(torch.compile(model.train(), **kw), idx, targets).backward()

        for task, fn in (("inference", infer), ("training", train)):
            codes = _codes(fn)
            for i, code in enumerate(codes):  # kept for reading: which kernels, what they fuse
                (run.out / "code").mkdir(parents=True, exist_ok=True)
                (run.out / "code" / f"{name}_{task}_{i}.py").write_text(code)
            mix_kernels = sum("mix" in k for c in codes for k in _kernel_names(c))
            extern_mix = any(
                "mhc_fx.mix" in line for c in codes for line in c.splitlines() if not line.lstrip().startswith("#")
            )
            row = {
                "variant": name,
                "task": task,
                "launches_per_graph": [len(_kernel_names(c)) for c in codes],
                "mix_kernels": mix_kernels,
                "extern_mix_call": extern_mix,
            }
            result["rows"].append(row)
            log(f"  {name:20s} {task:9s} launches {row['launches_per_graph']} mix kernels {mix_kernels}")
    return result


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
            fns = {name: _rotating(fn, sets) for name, fn in variants.items()}
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
                        replays[name + " (graph)"] = _graphed(fn, len(sets) if name != "copy" else 1)
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


def _graphed(fn, calls: int):
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


def _rotating(fn, sets):
    state = {"i": 0}

    def call():
        (branch, *history), theta = sets[state["i"] % len(sets)]
        state["i"] += 1
        return fn(branch, history, theta)

    return call


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
    layers, dim, seq, batch = (2, 64, 32, 2) if run.tiny else (12, 384, 256, 8)
    rounds, reps = (2, 1) if run.tiny else (7, 5)
    base, idx, targets = gpt_inputs(layers, dim, seq, batch, run.device)
    plan = [row for row in _train_plan() if run.only.search(f"train {row[0]}")]
    if run.compile_mode is not None:  # compiled variants only, in that mode
        plan = [
            (f"{label} [{run.compile_mode}]", kind, _with_mode(kw, run.compile_mode))
            for label, kind, kw in plan
            if kw is not None and "opaque" not in label
        ]
    rows = []
    for task in ("train", "infer"):
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--tiny", action="store_true", help="small sizes: the CPU smoke test")
    parser.add_argument("--compile-mode", default=None, help="train stage: torch.compile mode, e.g. reduce-overhead")
    parser.add_argument(
        "--only",
        default=".*",
        help="regex: keep site dtypes/K ('site float32', 'site K=4') and train variants matching it",
    )
    parser.add_argument("--stages", default="correctness,kernels,site,train")
    args = parser.parse_args(argv)
    run = Run(args.device, args.tiny, args.budget_s, args.out, args.compile_mode)
    run.only = re.compile(args.only)
    log(f"environment: {run.results['environment']}")
    stages = {"correctness": correctness, "kernels": kernels, "site": site, "train": train}
    for name in args.stages.split(","):
        if name not in stages:
            parser.error(f"--stages: unknown stage {name!r}; known: {', '.join(stages)}")
        run.stage(name, stages[name])
    log(f"done; results in {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
