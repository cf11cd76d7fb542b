"""``python -m benchmarks.gpu`` (the GPU checks run on a lent GPU machine) on the CPU at tiny sizes,
so the script cannot rot between GPU sessions. Its numbers are checked for sense, never timed."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import run_module

ONLY = "site|residual / inductor|mhc / backend mhc$|eager"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_script")
    run_module("benchmarks.gpu", "--device", "cpu", "--tiny", "--out", str(out), "--only", ONLY)
    return json.loads((out / "gpu.json").read_text())


def test_every_stage_ran(results):
    for stage in ("correctness", "kernels", "site", "train", "composition"):
        assert "status" not in results[stage], results[stage].get("traceback", results[stage])
    assert results["environment"]["device"] == "cpu"


def test_compiled_matches_eager(results):
    rows = results["correctness"]["rows"]
    assert {r["mode"] for r in rows} == {"residual", "hc", "mhc", "mhc_identity", "mhc_stochastic"}
    for row in rows:
        assert row["loss_rel_diff"] < 1e-5 and row["grad_rel_diff_max"] < 1e-4, row
    training = results["correctness"]["training"]
    assert training["param_rel_diff_max"] < 1e-4, training


def test_kernel_counts_found_the_fused_sites(results):
    rows = {(r["variant"], r["task"]): r for r in results["kernels"]["rows"]}
    assert results["kernels"]["sites"] >= 2
    for (variant, _), row in rows.items():
        assert all(n > 0 for n in row["launches_per_graph"]), row  # the counter sees C++ kernels too
        assert not row["extern_mix_call"], row
        assert (row["mix_kernels"] > 0) == variant.startswith("mhc"), row


def test_site_and_train_times_are_positive_and_finite(results):
    site_variants = {r["variant"] for r in results["site"]["rows"]}
    assert {"eager", "inductor_opaque", "backend_mhc", "backend_mhc_no_inline", "copy"} <= site_variants
    train = results["train"]["dims"]["64"]["rows"]
    assert {r["variant"] for r in train} == {
        "residual / inductor",
        "mhc / backend mhc",
        "residual / eager",
        "mhc / eager",
    }
    for row in results["site"]["rows"] + train:
        value = row.get("time_us", row.get("time_ms"))
        assert value is not None and math.isfinite(value) and value > 0, row


def test_composition_on_the_device_matches(results):
    for row in results["composition"]["checkpointing"]:
        assert row["grad_rel_diff_max"] < 1e-5, row
    threads = results["composition"]["threads"]
    assert threads["mismatches"] == 0 and not threads["errors"], threads
