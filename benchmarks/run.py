"""``python -m benchmarks.run [--quick | --full] [--out DIR]``: run the suite, write the results.

Writes ``DIR/results.json`` (everything measured), ``DIR/results.md`` (the
tables, targets marked met / missed) and ``DIR/results.png`` (skipped, with a
note, when matplotlib is missing). Progress goes to stderr.

Compile times are cold: the run uses a fresh Inductor cache directory and turns
the FX-graph and AOTAutograd caches off (kernel binaries compiled earlier in the
same run are still reused by identical kernels).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from . import bandwidth, end_to_end, machine, mixing, peers, report, scaling, targets
from .contention import QUIET
from .profiles import PROFILES, Profile
from .progress import elapsed, log


def _fresh_compile_caches(directory: str) -> None:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = directory
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False


def source_revision() -> str:
    """The git commit the run measured, marked ``+dirty`` when mhc_fx/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "mhc_fx"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    if sha.returncode != 0:
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run(profile: Profile) -> dict:
    """Every section, in order; returns the results dict (targets included)."""
    results = {"machine": machine.describe(), "profile": profile.describe()}
    QUIET.budget_s = profile.quiet_budget_s
    log(f"profile {profile.name}: {results['machine']['cpu']}, torch {torch.__version__}")
    log("1/4 streaming bandwidth")
    limit = bandwidth.measure(profile.bandwidth_mb, profile.bandwidth_rounds, min_sample_s=0.1)
    results["bandwidth"] = limit
    log(f"limit {limit['limit_gb_s']:.1f} GB/s ({limit['limit_kernel']})")
    log("2/4 mixing")
    mix_options = dict(rounds=profile.mix_rounds, min_sample_s=profile.mix_min_sample_s, stream_mb=profile.bandwidth_mb)
    results["mixing"] = mixing.measure(
        profile.mix_shape, profile.mix_dtypes, profile.mix_ks, profile.mix_variants, **mix_options
    )
    log("3/4 end to end")
    results["end_to_end"] = end_to_end.measure(
        profile.gpt,
        history=profile.history,
        streams=profile.streams,
        plan=profile.e2e_plan,
        skipped=profile.e2e_skipped,
        rounds=profile.e2e_rounds,
        min_sample_s=profile.e2e_min_sample_s,
    )
    log("4/4 scaling")
    sizes = profile.scaling_sizes()
    results["scaling"] = {
        "width": profile.scaling_width,
        "convert": scaling.convert_time(sizes, history=profile.history, rounds=profile.scaling_rounds),
        "compile": scaling.compile_time(sizes, history=profile.history, rounds=profile.scaling_rounds),
        "mixing_vs_k": scaling.mixing_vs_k(
            results["mixing"], profile.mix_shape, profile.k_sweep_extra, profile.k_sweep_variants, **mix_options
        ),
    }
    results["targets"] = targets.evaluate(results)
    return results


def write(results: dict, out: Path) -> None:
    """results.json, results.md and results.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    note = report.plot(results, out / "results.png")
    results["meta"]["plot"] = note or "results.png"
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = report.markdown(results)
    if note:
        text += f"\n_{note}_\n"
    (out / "results.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick", help="small CI smoke run")
    size.add_argument("--full", action="store_const", dest="profile", const="full", help="the issue's sizes (default)")
    parser.add_argument("--out", type=Path, help="output directory (default: benchmarks/results/<profile>)")
    args = parser.parse_args(argv)
    profile = PROFILES[args.profile or "full"]
    out = args.out or Path("benchmarks/results") / profile.name
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="mhc_fx_bench_inductor_") as cache:
        _fresh_compile_caches(cache)
        results = run(profile)
    results["meta"] = {
        "profile": profile.name,
        "command": shlex.join(["python", "-m", "benchmarks.run", *argv]),
        "duration_s": elapsed(),
        "source": source_revision(),
        "waited_for_quiet_s": QUIET.waited_s,
        "load_average_at_end": machine.load_average(),
        "peers": peers.versions(),
    }
    write(results, out)
    log(f"done in {elapsed() / 60:.1f} min: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
