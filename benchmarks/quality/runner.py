"""Run every (depth, variant, lr, seed) of a profile in worker processes, one torch thread each.

Order: seed by seed (so a time budget that runs out costs seeds evenly across cells, never whole cells),
deepest first inside a seed. No run starts after ``profile.budget_s``; those left are recorded as skipped.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
import time
import traceback

import torch

from mhc_fx.demo.data import load_splits

from . import train
from .profiles import Profile
from .variants import BASELINE

_START = time.perf_counter()
_DATA = None


def log(message: str) -> None:
    """``[  12.3s] message`` on stderr at once."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _init_worker(profile: Profile, threads: int) -> None:
    global _DATA
    torch.set_num_threads(threads)
    _DATA = load_splits(max_bytes=profile.data_bytes)


def _work(profile: Profile, depth: int, variant: str, lr: float, seed: int) -> dict:
    started = time.perf_counter()
    try:
        record = train.run(profile, depth, variant, lr, seed, *_DATA)
    except Exception:  # a bug, not a divergence: recorded apart and reported
        record = {
            "depth": depth,
            "variant": variant,
            "lr": lr,
            "seed": seed,
            "skipped": "error",
            "error": traceback.format_exc(limit=8),
        }
    record["wall_s"] = time.perf_counter() - started
    return record


def _cost(depth: int, variant: str) -> float:
    """Relative cost of a run, for the ETA (eager mixing sites cost about half a plain block more)."""
    return depth * (1.0 if variant == BASELINE else 1.5) + 2.0


def order(profile: Profile) -> list[tuple]:
    runs = profile.runs()
    return sorted(runs, key=lambda r: (r[3], -r[0], profile.variants.index(r[1]), r[2]))


def _describe(record: dict) -> str:
    head = f"depth {record['depth']:>3} {record['variant']:<9} lr {record['lr']:<7g} seed {record['seed']}"
    if record.get("skipped"):
        return f"{head}: ERROR {record.get('error', '').strip().splitlines()[-1]}"
    if record["diverged"]:
        return f"{head}: DIVERGED ({record['divergence']}), {record['step_time_s'] * 1e3:.0f} ms/step"
    val = f"val {record['final_val_loss']:.3f}"
    return f"{head}: {val}, eff.depth {record['effective_depth']:.2f}, {record['step_time_s'] * 1e3:.0f} ms/step"


def run_all(profile: Profile, workers: int, done: set = frozenset()) -> list[dict]:
    """Every run of ``profile`` not in ``done`` (keys (depth, variant, lr, seed)); ``workers`` processes
    (0: in this process, for debugging)."""
    pending = [key for key in order(profile) if key not in done]
    count = len(pending)
    total_cost = sum(_cost(d, v) for d, v, _, _ in pending)
    done_cost, records, started = 0.0, [], time.perf_counter()
    log(
        f"{count} runs to do ({len(profile.cells())} cells, seeds {profile.seeds}, {len(done)} runs already done), "
        f"{max(workers, 1)} worker(s)"
    )

    def finished(record: dict, key: tuple) -> None:
        nonlocal done_cost
        done_cost += _cost(key[0], key[1])
        records.append(record)
        elapsed = time.perf_counter() - started
        eta = elapsed / done_cost * (total_cost - done_cost)
        log(f"{len(records):>3}/{count} {_describe(record)}  (eta {eta:4.0f}s)")

    def over_budget() -> bool:
        return time.perf_counter() - started > profile.budget_s

    if workers == 0:
        _init_worker(profile, 1)
        while pending and not over_budget():
            key = pending.pop(0)
            finished(_work(profile, *key), key)
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(profile, 1)) as pool:
            running: dict[cf.Future, tuple] = {}
            while pending or running:
                while pending and len(running) < workers and not over_budget():
                    key = pending.pop(0)
                    running[pool.submit(_work, profile, *key)] = key
                if not running:
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    finished(future.result(), running.pop(future))
    for depth, variant, lr, seed in pending:
        records.append({"depth": depth, "variant": variant, "lr": lr, "seed": seed, "skipped": "time budget"})
    if pending:
        log(f"time budget of {profile.budget_s:.0f}s reached: {len(pending)} runs skipped (listed in results.json)")
    return records
