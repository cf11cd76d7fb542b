"""Smoke test of the benchmark suite: ``python -m benchmarks.run --quick`` produces finite results.

Checks that the run finishes and writes results.json / results.md with every
section, that every number is finite and every time, rate and size positive,
and that peers missing from the environment are recorded as "not installed".
It never compares a time with a threshold.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest

from tests.helpers import run_module

SECTIONS = ("machine", "profile", "meta", "bandwidth", "mixing", "end_to_end", "scaling", "targets")
POSITIVE = {
    "time_s",
    "median_s",
    "min_s",
    "max_s",
    "bytes",
    "gb_s",
    "gb_s_write_allocate",
    "limit_gb_s",
    "limit_gb_s_write_allocate",
    "fraction_of_limit",
    "fraction_of_limit_write_allocate",
    "ratio_to_residual",
    "first_call_s",
    "compile_s",
    "forward_s",
    "peak_mb",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    run_module("benchmarks.run", "--quick", "--out", str(out))
    return out


def _numbers(node, path=""):
    """Every (path, key, number) in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield f"{path}.{key}", key, value
            else:
                yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield f"{path}[{i}]", None, value
            else:
                yield from _numbers(value, f"{path}[{i}]")


def test_results_written_with_every_section(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    assert set(SECTIONS) <= set(results)
    assert (quick_run / "results.md").read_text().startswith("# mhc_fx benchmarks (quick)")
    assert results["bandwidth"]["kernels"].keys() == {"copy", "add", "triad"}
    assert any("time_s" in r for r in results["mixing"]["rows"])
    measured = {(r["mode"], r["task"], r["model"]) for r in results["end_to_end"]["rows"] if "time_s" in r}
    for mode, task in (("eager", "train"), ("eager", "infer"), ("mhc", "train"), ("mhc", "infer")):
        assert {(mode, task, "residual"), (mode, task, "convert_mhc")} <= measured
    assert results["scaling"]["convert"] and results["scaling"]["compile"] and results["scaling"]["mixing_vs_k"]
    assert all({"target", "case", "display", "met"} <= set(t) for t in results["targets"])


def test_every_number_finite_and_times_positive(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    numbers = list(_numbers(results))
    assert numbers
    for path, key, value in numbers:
        assert math.isfinite(value), path
        if key in POSITIVE:
            assert value > 0, path


def test_missing_peers_recorded_as_not_installed(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    peers = (("mhc", "mhc", "mhc_package"), ("hyper_connections", "hyper-connections", "hyper_connections"))
    for module, dist, model in peers:
        if _importable(module):
            continue
        assert results["meta"]["peers"][dist] == "not installed"
        rows = [r for r in results["end_to_end"]["rows"] if r["model"] == model and r["mode"] == "eager"]
        assert rows and all(r["status"] == "not installed" for r in rows)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
