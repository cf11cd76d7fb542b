"""The issue's targets, evaluated on a run's results as met / missed. Never asserted.

Each target becomes one or more rows ``{target, case, value, display, threshold, met}``;
``met`` is None (and ``display`` says why) where the run did not measure the case.
"""

from __future__ import annotations


def _row(target, case, value, threshold, met, display):
    return {"target": target, "case": case, "value": value, "threshold": threshold, "met": met, "display": display}


def _missing(target, case, why):
    return _row(target, case, None, None, None, why)


def _e2e(results, mode, task, model):
    for r in results["end_to_end"]["rows"]:
        if (r["mode"], r["task"], r["model"]) == (mode, task, model):
            return r if "time_s" in r else None
    return None


def _mix(results, dtype, k, variant):
    for r in results["mixing"]["rows"]:
        if (r["dtype"], r["K"], r["variant"]) == (dtype, k, variant):
            return r if "time_s" in r else None
    return None


def fused_bandwidth(results) -> list[dict]:
    """Fused mixing (backend "mhc") reaches >= 80% of the streaming limit at K = 4."""
    target = "fused mixing >= 80% of streaming bandwidth at K = 4"
    rows = []
    for dtype in ("float32", "bfloat16"):
        r = _mix(results, dtype, 4, "ours_mhc")
        if r is None:
            rows.append(_missing(target, dtype, "not measured"))
            continue
        f = r["fraction_of_limit"]
        shown = f"{f:.0%} (write-allocate counting: {r['fraction_of_limit_write_allocate']:.0%})"
        rows.append(_row(target, f'{dtype}, backend="mhc"', f, 0.8, f >= 0.8, shown))
    return rows


def training_overhead(results) -> list[dict]:
    """Training step of convert(mhc) under backend "mhc" within 5% of the residual model's."""
    target = 'training step overhead of mhc over residual, backend="mhc", <= 5%'
    r = _e2e(results, "mhc", "train", "convert_mhc")
    if r is None:
        return [_missing(target, "H = 4", "not measured")]
    over = r["ratio_to_residual"] - 1
    return [_row(target, "H = 4", over, 0.05, over <= 0.05, f"{over:+.1%}")]


def _best(results, task, model):
    rows = [r for r in results["end_to_end"]["rows"] if r["task"] == task and r["model"] == model and "time_s" in r]
    return min(rows, key=lambda r: r["time_s"]) if rows else None


def versus_mhc_package(results) -> list[dict]:
    """At least 3x faster than the `mhc` package: one site, and the same network (best mode of each)."""
    target = ">= 3x faster than the mhc package (same network, same H)"
    rows = []
    for dtype in ("float32", "bfloat16"):
        ours, theirs = _mix(results, dtype, 4, "ours_mhc"), _mix(results, dtype, 4, "mhc_pkg_eager")
        case = f"one site, K = 4, {dtype}: MHCSkip eager / ours fused"
        if ours is None or theirs is None:
            rows.append(_missing(target, case, "mhc package not installed" if ours else "not measured"))
            continue
        x = theirs["time_s"] / ours["time_s"]
        rows.append(_row(target, case, x, 3.0, x >= 3.0, f"{x:.1f}x"))
    for task in ("train", "infer"):
        ours, theirs = _best(results, task, "convert_mhc"), _best(results, task, "mhc_package")
        case = f"GPT {task}: best mode of each"
        if ours is None or theirs is None:
            rows.append(_missing(target, case, "mhc package not installed" if ours else "not measured"))
            continue
        x = theirs["time_s"] / ours["time_s"]
        shown = f"{x:.2f}x ({theirs['mode']} vs {ours['mode']})"
        rows.append(_row(target, case, x, 3.0, x >= 3.0, shown))
    return rows


def eager_overhead(results) -> list[dict]:
    """Converted models in eager mode within 25% of the residual model's time."""
    target = "eager converted models <= 25% overhead"
    rows = []
    for model in ("convert_residual", "convert_hc", "convert_mhc"):
        for task in ("train", "infer"):
            r = _e2e(results, "eager", task, model)
            case = f"{model.removeprefix('convert_')}, {task}"
            if r is None:
                rows.append(_missing(target, case, "not measured"))
                continue
            over = r["ratio_to_residual"] - 1
            rows.append(_row(target, case, over, 0.25, over <= 0.25, f"{over:+.1%}"))
    return rows


#: Allowance for the sites' own K-float tensors (logits, weights, their gradients) on top of the window.
SITE_TENSORS_MB = 64 / 1024


def peak_memory(results) -> list[dict]:
    """Peak memory of convert(mhc) at most the residual model's plus the history window (H states,
    plus `SITE_TENSORS_MB` for the sites' K-float tensors)."""
    target = "peak memory <= residual + history window"
    window = results["end_to_end"]["history_window_mb"] + SITE_TENSORS_MB
    rows = []
    for mode in ("eager", "inductor", "mhc"):
        for task in ("train", "infer"):
            ours, base = _e2e(results, mode, task, "convert_mhc"), _e2e(results, mode, task, "residual")
            case = f"mhc, {mode}, {task}"
            if ours is None or base is None:
                rows.append(_missing(target, case, "not measured"))
                continue
            extra = ours["peak_mb"] - base["peak_mb"]
            shown = f"{extra:+.2f} MB over residual (window {window - SITE_TENSORS_MB:.2f} MB + 64 KB)"
            rows.append(_row(target, case, extra, window, extra <= window, shown))
    return rows


def evaluate(results) -> list[dict]:
    """Every target row for a run's results."""
    return [
        *fused_bandwidth(results),
        *training_overhead(results),
        *versus_mhc_package(results),
        *eager_overhead(results),
        *peak_memory(results),
    ]
