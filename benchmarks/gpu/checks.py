"""Stages 1 and 2: compiled against eager (and float64) on the device; kernels in the generated code."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING

import torch

import mhc_fx
from tests.helpers import perturb_mixing

from ..progress import log
from .models import gpt_inputs, loss_of, rel_diff

if TYPE_CHECKING:
    from .run import Run

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
