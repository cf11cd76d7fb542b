"""The run: device, time budget, the results file, and the command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path

import torch

from ..progress import log
from . import checks, composition, speed


class Run:
    """Device, sizes, the time budget and the results file."""

    def __init__(self, device: str, tiny: bool, budget_s: float, out: Path, compile_mode: str | None = None) -> None:
        self.device = torch.device(device)
        self.compile_mode = compile_mode
        self.only = re.compile(".*")
        self.dims: list[int] | None = None  # train stage: model widths (None: the default one)
        self.tasks = ("train", "infer")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The GPU checks of the backend and the benchmarks, as one short run.")
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
    parser.add_argument("--stages", default="correctness,kernels,site,train,composition")
    parser.add_argument("--dims", default=None, help="train stage: comma-separated model widths, e.g. 384,1024")
    parser.add_argument("--tasks", default="train,infer", help="train stage: train and/or infer")
    args = parser.parse_args(argv)
    run = Run(args.device, args.tiny, args.budget_s, args.out, args.compile_mode)
    run.only = re.compile(args.only)
    run.dims = [int(d) for d in args.dims.split(",")] if args.dims else None
    run.tasks = tuple(t for t in args.tasks.split(",") if t)
    if not set(run.tasks) <= {"train", "infer"}:
        parser.error(f"--tasks: train and/or infer, got {args.tasks!r}")
    log(f"environment: {run.results['environment']}")
    stages = {
        "correctness": checks.correctness,
        "kernels": checks.kernels,
        "site": speed.site,
        "train": speed.train,
        "composition": composition.composition,
    }
    for name in args.stages.split(","):
        if name not in stages:
            parser.error(f"--stages: unknown stage {name!r}; known: {', '.join(stages)}")
        run.stage(name, stages[name])
    log(f"done; results in {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
