"""4. Scaling: `convert` time and compile time against depth; mixing cost against K.

Depth uses a narrow GPT (the cost of converting and compiling depends on the
number of layers and sites, not on the width). Convert time is interleaved and
repeated across depths. Compile time is one cold compile of the inference
forward per (depth, variant) (FX-graph and AOTAutograd caches off; kernel
binaries compiled earlier in the same run are reused): the plain model under
default Inductor against the converted ``mhc`` model under ``backend="mhc"``.
Compile time = first call minus the median of the following calls.
"""

from __future__ import annotations

import torch

import mhc_fx

from . import mixing, models
from .bandwidth import Stream
from .progress import log
from .timing import interleaved, time_call

COMPILED = {"residual": "inductor", "convert_mhc": "mhc"}


def convert_time(sizes: list[models.GPTSize], *, history: int, rounds: int) -> list[dict]:
    """Median seconds of ``convert(model, mode="mhc")`` per depth (interleaved)."""
    bases = {size.layers: models.base_gpt(size) for size in sizes}
    fns = {layers: _converter(base, history) for layers, base in bases.items()}
    log(f"scaling: convert time at depths {list(fns)}")
    timings = interleaved(fns, rounds=rounds, warmup=1)
    return [{"layers": layers, "time_s": t.median_s, "timing": t.to_dict()} for layers, t in timings.items()]


def _converter(base, history):
    return lambda: mhc_fx.convert(base, mode="mhc", max_history=history)


def compile_time(sizes: list[models.GPTSize], *, history: int, rounds: int) -> list[dict]:
    """Cold compile time of the inference forward per depth, residual/Inductor vs mhc/backend "mhc"."""
    rows = []
    for size in sizes:
        base = models.base_gpt(size)
        idx = torch.randint(0, size.vocab, (size.batch, size.seq))
        for name, backend in COMPILED.items():
            torch._dynamo.reset()
            model = models.build(name, base, history=history, streams=1).eval()
            compiled = torch.compile(model, backend=backend)

            def forward(compiled=compiled):
                with torch.no_grad():
                    compiled(idx)

            log(f"scaling: compile {name} ({backend}) at {size.layers} layers")
            first = time_call(forward)
            steady = interleaved({name: forward}, rounds=rounds, warmup=0)[name].median_s
            rows.append(
                {
                    "layers": size.layers,
                    "model": name,
                    "backend": backend,
                    "compile_s": first - steady,
                    "first_call_s": first,
                    "forward_s": steady,
                }
            )
    return rows


def mixing_vs_k(section2: dict, shape, extra_ks, variants, *, rounds, min_sample_s, stream_mb) -> list[dict]:
    """float32 mixing cost per K: section 2's rows for ``variants`` plus new ones at ``extra_ks``."""
    rows = [r for r in section2["rows"] if r["dtype"] == "float32" and r["variant"] in variants]
    stream = Stream(stream_mb)
    for k in extra_ks:
        rows += mixing.measure_site(
            shape, torch.float32, k, variants, rounds=rounds, min_sample_s=min_sample_s, stream=stream
        )
    return sorted(rows, key=lambda r: (r["variant"], r["K"]))
