"""CI smoke of the training-quality study: ``python -m benchmarks.quality --quick`` runs end to end and its
results.json holds every cell, each run with finite numbers or an explicit divergence flag. No timing asserts."""

import json
import math

from tests.helpers import run_module


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_quick_study_writes_every_cell(tmp_path):
    out = tmp_path / "quality"
    run_module("benchmarks.quality", "--quick", "--out", str(out))
    results = json.loads((out / "results.json").read_text())
    profile = results["profile"]
    overrides = {v: s for v, s in profile["seed_overrides"]}
    cells = {(d, v, lr) for d in profile["depths"] for v in profile["variants"] for lr in profile["lrs"]}

    assert {(r["depth"], r["variant"], r["lr"]) for r in results["summary"]} == cells
    runs = {(r["depth"], r["variant"], r["lr"], r["seed"]): r for r in results["runs"]}
    expected = {(d, v, lr, s) for d, v, lr in cells for s in overrides.get(v, profile["seeds"])}
    assert set(runs) == expected
    for key, run in runs.items():
        assert not run.get("skipped"), (key, run.get("error"))
        assert run["steps_done"] >= 1
        assert _finite(run["step_time_s"]) and run["step_time_s"] > 0
        if run["diverged"]:
            assert run["divergence"], key  # the reason is recorded
            assert run["final_val_loss"] is None
            continue
        assert _finite(run["final_val_loss"]) and run["final_val_loss"] < run["initial_val_loss"], key
        assert _finite(run["grad_noise"]["var"]) and run["grad_noise"]["var"] >= 0, key
        assert all(_finite(v) for v in run["train_loss"]), key
        assert _finite(run["effective_depth"]) and 0 <= run["effective_depth"] <= profile["max_history"] - 1
        for site, alpha in run["alphas"].items():
            assert abs(sum(alpha) - 1) < 1e-3 and min(alpha) >= -1e-6, (key, site)
    for row in results["summary"]:
        assert row["diverged"] == len(row["seeds"]) or _finite(row["val_loss_mean"]), row
    if (out / "val_vs_depth.png").exists():  # matplotlib installed
        assert (out / "results.md").read_text().count("![") >= 1 + len(profile["depths"])
    assert "Validation loss" in (out / "results.md").read_text()
