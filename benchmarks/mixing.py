"""2. One mixing site: ``y = b + sum_k alpha_k s_k`` at (B, T, C), every implementation.

All variants get the same inputs: a branch, K states and the site's K logits
(zeros, so every implementation mixes with uniform weights and all K states
are read), and run under ``torch.no_grad()``. Ours includes the projection of
the logits (``mixing_weights`` of an ``mhc`` config) in the timed function.

    ours_eager            mhc_fx.mix, eager (the op's reference kernel)
    ours_inductor         the same function under torch.compile (default Inductor: mix opaque)
    ours_mhc              the same function under torch.compile(backend="mhc")
    torch_ops_inductor    the same math in plain torch ops under default Inductor (a reference)
    mhc_pkg_eager         the `mhc` package's MHCSkip, eager
    mhc_pkg_inductor      MHCSkip under default Inductor

Bytes that must move: (K + 2) tensors (K states and the branch read, the result
written once); the write-allocate variant adds one more write. The fraction of
the limit divides by the streaming bandwidth (`bandwidth.Stream`) measured in
the same interleaved rounds as the variants.

Every call reads the next of several input sets, enough of them to hold four
times the last-level cache, so each call streams its inputs from memory as the
bandwidth kernels do (at (8, 512, 768) one float32 tensor is 12 MB, and a
32 MB cache would otherwise hold much of a K = 2 site between calls).
"""

from __future__ import annotations

import itertools
import math

import torch

import mhc_fx
from mhc_fx.ops import mix_reference
from mhc_fx.projections import mixing_weights

from . import machine, peers
from .bandwidth import Stream
from .progress import log
from .timing import interleaved

CONFIG = mhc_fx.MHCConfig(mode="mhc")

LABELS = {
    "ours_eager": "ours, eager",
    "ours_inductor": "ours, Inductor (mix opaque)",
    "ours_mhc": 'ours, backend="mhc"',
    "torch_ops_inductor": "same math in torch ops, Inductor",
    "mhc_pkg_eager": "mhc package MHCSkip, eager",
    "mhc_pkg_inductor": "mhc package MHCSkip, Inductor",
}
OURS = ("ours_eager", "ours_inductor", "ours_mhc")


def site(branch, history, theta):
    """Our site: project the logits, then mix."""
    return mhc_fx.mix(branch, history, mixing_weights(theta, CONFIG))


def site_torch_ops(branch, history, theta):
    """The same math as plain torch ops (what the "mhc" backend hands Inductor)."""
    return mix_reference(branch, history, mixing_weights(theta, CONFIG))


def inputs(shape, dtype: torch.dtype, k: int, seed: int = 0):
    """Branch, K states (oldest first) and K zero logits."""
    gen = torch.Generator().manual_seed(seed)
    branch, *history = (torch.randn(shape, generator=gen).to(dtype) for _ in range(k + 1))
    return branch, history, torch.zeros(k)


def input_sets(shape, dtype: torch.dtype, k: int) -> list[tuple]:
    """As many input sets as it takes to hold 4x the last-level cache (at least one)."""
    set_bytes = (k + 1) * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    count = max(1, math.ceil(4 * machine.last_level_cache_bytes() / set_bytes))
    return [inputs(shape, dtype, k, seed) for seed in range(count)]


def _mhc_package_skip(k: int):
    mhc = peers.load("mhc")
    if mhc is None:
        return None
    skip = mhc.MHCSkip(mode="mhc", max_history=k, constraint="simplex")
    with torch.no_grad():
        skip.mixing_logits.zero_()  # uniform weights, as ours
    return skip


def _rotating(fn, sets, arity=3):
    """A zero-argument callable that calls ``fn`` on the next input set each time."""
    cycle = itertools.cycle([s[:arity] for s in sets])
    return lambda: fn(*next(cycle))


def candidates(sets, variants) -> tuple[dict, dict]:
    """name -> zero-argument callable for the variants that can run; name -> reason for the others."""
    fns, skipped = {}, {}
    k = len(sets[0][1])
    for name in variants:
        if name == "ours_eager":
            fns[name] = _rotating(site, sets)
        elif name == "ours_inductor":
            fns[name] = _rotating(torch.compile(site, dynamic=False), sets)
        elif name == "ours_mhc":
            fns[name] = _rotating(torch.compile(site, backend="mhc", dynamic=False), sets)
        elif name == "torch_ops_inductor":
            fns[name] = _rotating(torch.compile(site_torch_ops, dynamic=False), sets)
        elif name.startswith("mhc_pkg"):
            skip = _mhc_package_skip(k)
            if skip is None:
                skipped[name] = peers.NOT_INSTALLED
                continue
            if name.endswith("inductor"):
                skip = torch.compile(skip, dynamic=False)
            fns[name] = _rotating(skip, sets, arity=2)
        else:
            raise ValueError(f"unknown mixing variant {name!r}; known: {sorted(LABELS)}")
    return fns, skipped


def measure_site(shape, dtype, k, variants, *, rounds, min_sample_s, stream: Stream) -> list[dict]:
    """Rows for one (dtype, K): time, bytes, GB/s and fraction of the limit per variant."""
    torch._dynamo.reset()
    sets = input_sets(shape, dtype, k)
    tensor_bytes = sets[0][0].numel() * sets[0][0].element_size()
    rows = []
    with torch.no_grad():
        fns, skipped = candidates(sets, variants)
        log(f"mixing {dtype} K={k}: compiling and checking {len(fns)} variants ({len(sets)} input sets)")
        expected = [site(*s).float() for s in sets]
        # Each rotating callable starts at set 0, so its i-th call here reads set i.
        diffs = {name: max((fn().float() - e).abs().max().item() for e in expected) for name, fn in fns.items()}
        timings = interleaved({**fns, **stream.fns}, rounds=rounds, warmup=1, min_sample_s=min_sample_s)
    limit = stream.summarize(timings)
    for name in variants:
        row = {"dtype": str(dtype).removeprefix("torch."), "K": k, "variant": name, "label": LABELS[name]}
        if name in skipped:
            rows.append({**row, "status": skipped[name]})
            continue
        t = timings[name].median_s
        moved = (k + 2) * tensor_bytes
        gb_s = moved / t / 1e9
        gb_s_wa = (moved + tensor_bytes) / t / 1e9
        rows.append(
            {
                **row,
                "time_s": t,
                "bytes": moved,
                "gb_s": gb_s,
                "limit_gb_s": limit["limit_gb_s"],
                "fraction_of_limit": gb_s / limit["limit_gb_s"],
                "fraction_of_limit_write_allocate": gb_s_wa / limit["limit_gb_s_write_allocate"],
                "max_abs_diff_vs_ours_eager": diffs[name],
                "input_sets": len(sets),
                "timing": timings[name].to_dict(),
            }
        )
    return rows


def measure(shape, dtypes, ks, variants, *, rounds, min_sample_s, stream_mb) -> dict:
    """Section 2: every (dtype, K) group, each timed interleaved with the streaming kernels."""
    stream = Stream(stream_mb)
    rows = []
    for dtype in dtypes:
        for k in ks:
            rows += measure_site(shape, dtype, k, variants, rounds=rounds, min_sample_s=min_sample_s, stream=stream)
    return {
        "shape": list(shape),
        "bytes_counting": "(K + 2) * tensor bytes; write-allocate adds 1",
        "limit": f"streaming bandwidth of {stream_mb:g} MB vectors, timed in the same rounds as each group",
        "rows": rows,
    }
