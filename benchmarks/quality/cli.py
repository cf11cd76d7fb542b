"""``python -m benchmarks.quality [--quick | --full] [--out DIR]``: run the study, write results.json,
results.md and the plots under DIR."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from benchmarks import machine

from . import metrics, plots, runner, tables
from .profiles import PROFILES, Profile
from .variants import VARIANTS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", dest="profile", action="store_const", const="quick", help="CI smoke, < 3 min (default)"
    )
    size.add_argument(
        "--full", dest="profile", action="store_const", const="full", help="the study, < 45 min on 2 cores"
    )
    p.set_defaults(profile="quick")
    p.add_argument("--out", type=Path, default=Path("quality-results"), help="output folder (default: quality-results)")
    p.add_argument("--workers", type=int, default=2, help="worker processes, one torch thread each (0: in-process)")
    p.add_argument("--depths", type=int, nargs="+", help="override the profile's depths")
    p.add_argument("--lrs", type=float, nargs="+", help="override the profile's learning rates")
    p.add_argument("--seeds", type=int, nargs="+", help="override the profile's seeds")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="override the profile's variants")
    p.add_argument("--steps", type=int, help="override the profile's step budget")
    p.add_argument("--budget-s", type=float, help="override the profile's time budget (no run starts after it)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RESULTS_JSON",
        help="keep the finished runs of an earlier results.json of the same profile and do only the rest",
    )
    p.add_argument(
        "--replot", type=Path, metavar="RESULTS_JSON", help="only redraw tables and plots from a results.json"
    )
    return p


def _profile(args) -> Profile:
    profile = PROFILES[args.profile]
    overrides = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in {
            "depths": args.depths,
            "lrs": args.lrs,
            "seeds": args.seeds,
            "variants": args.variants,
            "steps": args.steps,
            "budget_s": args.budget_s,
        }.items()
        if v is not None
    }
    if "seeds" in overrides:  # variants run with fewer seeds keep those among the new seeds (or the first)
        seeds = overrides["seeds"]
        overrides["seed_overrides"] = tuple(
            (v, tuple(x for x in s if x in seeds) or seeds[:1]) for v, s in profile.seed_overrides
        )
    if "steps" in overrides:
        steps = overrides["steps"]
        overrides.update(
            warmup=max(1, steps // 10),
            eval_every=max(1, steps // 6),
            noise_window=min(profile.noise_window, max(2, steps // 3)),
        )
    return dataclasses.replace(profile, **overrides)


CURVES = ("val_curve", "train_loss", "grad_norm", "alphas")


def _write_summary(results: dict, out: Path) -> None:
    """summary.json: results.json without the per-step curves and the alphas (small enough to commit)."""
    runs = [{k: v for k, v in r.items() if k not in CURVES} for r in results["runs"]]
    (out / "summary.json").write_text(json.dumps({**results, "runs": runs}, indent=1))


def report(results: dict, out: Path) -> None:
    """results.md and the plots, from a results dict (fresh or read back from results.json)."""
    fields = {f.name for f in dataclasses.fields(Profile)}
    raw = {k: v for k, v in results["profile"].items() if k in fields}
    raw["seed_overrides"] = tuple((v, tuple(s)) for v, s in raw.get("seed_overrides", ()))
    profile = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    drawn = plots.draw(profile, results["runs"], results["summary"], out)
    text = tables.markdown(profile, results["summary"], results["paired"], results["meta"])
    if isinstance(drawn, str):
        text += f"\n{drawn}\n"
    else:
        text += "\n## Plots\n\n" + "\n".join(f"![{name}]({name})" for name in drawn) + "\n"
    errors = [r for r in results["runs"] if r.get("skipped") == "error"]
    skipped = [r for r in results["runs"] if r.get("skipped") == "time budget"]
    if errors or skipped:
        text += f"\n{len(errors)} runs failed with an error and {len(skipped)} were skipped by the time budget.\n"
    (out / "results.md").write_text(text)
    runner.log(
        f"wrote {out / 'results.md'}" + (f" ({drawn})" if isinstance(drawn, str) else f" and {len(drawn)} plots")
    )


def _key(run: dict) -> tuple:
    return run["depth"], run["variant"], run["lr"], run["seed"]


def _resumed(path: Path, profile: Profile) -> tuple[list[dict], list[dict]]:
    """The finished runs and the parts (command, runtime) of an earlier results.json of the same profile.
    Runs are deterministic (one thread, seeded init and batches), so a resumed grid equals an unbroken one."""
    earlier = json.loads(path.read_text())
    mine, theirs = profile.to_dict(), dict(earlier["profile"])
    mine.pop("budget_s"), theirs.pop("budget_s", None)
    if json.loads(json.dumps(mine)) != theirs:
        raise SystemExit(f"--resume {path}: its profile differs from this one; refusing to mix them")
    kept = [r for r in earlier["runs"] if not r.get("skipped")]
    parts = earlier["meta"].get("parts") or [
        {
            "command": earlier["meta"]["command"],
            "date_utc": earlier["meta"]["machine"]["date_utc"],
            "runtime_s": earlier["meta"]["runtime_s"],
            "runs": len(kept),
        }
    ]
    runner.log(f"resuming {path}: {len(kept)} finished runs kept")
    return kept, parts


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.replot:
        results = json.loads(args.replot.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        _write_summary(results, args.out)
        report(results, args.out)
        return 0
    profile = _profile(args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.quality " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    info = machine.describe()
    runner.log(
        f"profile {profile.name}: depths {profile.depths}, variants {profile.variants}, lrs {profile.lrs}, "
        f"seeds {profile.seeds}, {profile.steps} steps; out {args.out}"
    )
    kept, parts = _resumed(args.resume, profile) if args.resume else ([], [])
    started = time.perf_counter()
    records = kept + runner.run_all(profile, args.workers, {_key(r) for r in kept})
    part = {
        "command": command.strip(),
        "date_utc": info["date_utc"],
        "runtime_s": time.perf_counter() - started,
        "runs": sum(not r.get("skipped") for r in records) - len(kept),
        "load_average_at_start": info["load_average_at_start"],
        "load_average_at_end": machine.load_average(),
    }
    parts.append(part)
    cells = profile.cells()
    results = {
        "meta": {
            "command": parts[0]["command"],
            "machine": info,
            "load_average_at_end": part["load_average_at_end"],
            "workers": max(args.workers, 1),
            "execution": "eager (see docs/quality.md for why not backend='mhc')",
            "runtime_s": sum(p["runtime_s"] for p in parts),
            "parts": parts,
            "divergence": "a NaN/inf loss or gradient norm at any step, or a final validation loss not below "
            "the initial one",
        },
        "profile": profile.to_dict(),
        "summary": metrics.summarize(records, cells),
        "paired": metrics.paired(records, cells),
        "runs": sorted(records, key=lambda r: (r["depth"], r["variant"], r["lr"], r["seed"])),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    _write_summary(results, args.out)
    runner.log(f"wrote {args.out / 'results.json'} ({len(records)} runs, {results['meta']['runtime_s']:.0f} s)")
    report(results, args.out)
    return 0
