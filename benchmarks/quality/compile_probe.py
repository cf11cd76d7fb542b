"""``python -m benchmarks.quality.compile_probe [--depths 8 32] [--steps 15]``: should the study compile?

For each depth and for the residual and mhc variants of the --full model: the first compiled training step
with empty compile caches (a fresh cache folder: cold), the first one again after `torch._dynamo.reset()`
(warm: what a second worker or a second run of the same graph pays), the median compiled step and the
median eager step, all in this process with one torch thread (as the study's workers run). Prints a table
and the break-even number of steps beyond which one cold compile pays for itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch.nn import functional as F

from . import train
from .profiles import FULL


def _step(model, opt, x, y) -> float:
    t0 = time.perf_counter()
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def measure(depth: int, variant: str, steps: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, train.VOCAB, (FULL.batch, FULL.length), generator=gen)
    y = torch.randint(0, train.VOCAB, (FULL.batch, FULL.length), generator=gen)
    out = {"depth": depth, "variant": variant}
    for how in ("eager", "compiled", "warm"):
        torch._dynamo.reset()
        model = train.build(FULL, depth, variant, seed=0).train()
        opt = train.optimizer(model, FULL, 1e-3)
        run = model if how == "eager" else torch.compile(model, backend="mhc")
        out[f"{how}_first_s"] = _step(run, opt, x, y)
        if how != "warm":
            out[f"{how}_step_s"] = statistics.median(_step(run, opt, x, y) for _ in range(steps))
    saved = out["eager_step_s"] - out["compiled_step_s"]
    overhead = out["compiled_first_s"] - out["compiled_step_s"]
    out["break_even_steps"] = overhead / saved if saved > 0 else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.compile_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", default=[8, 32])
    p.add_argument("--variants", nargs="+", default=["residual", "mhc"])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mhc_quality_compile_")  # cold caches
    rows = []
    print(
        "| depth | variant | eager ms/step | compiled ms/step | first step, cold (s) | first step, warm (s) "
        "| break-even steps (cold) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for depth in args.depths:
        for variant in args.variants:
            r = measure(depth, variant, args.steps)
            rows.append(r)
            be = "never" if r["break_even_steps"] is None else f"{r['break_even_steps']:.0f}"
            print(
                f"| {depth} | {variant} | {r['eager_step_s'] * 1e3:.0f} | {r['compiled_step_s'] * 1e3:.0f} | "
                f"{r['compiled_first_s']:.1f} | {r['warm_first_s']:.1f} | {be} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
