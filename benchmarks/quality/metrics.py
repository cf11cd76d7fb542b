"""The study's metrics, from the records that `train.run` returns, and their summaries over seeds."""

from __future__ import annotations

import math
import statistics

from .variants import BASELINE


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN or infinity: a non-finite number becomes None (the run carries the reason)."""
    return float(x) if x is not None and math.isfinite(x) else None


def gradient_noise(norms: list[float], window: int) -> dict | None:
    """Variance (and mean, coefficient of variation) of the global gradient norm over the last ``window``
    steps: the quantity behind the `mhc` package's "40% reduction in gradient noise". None when the run
    stopped early or a norm there is not finite."""
    tail = norms[-window:]
    if len(norms) < window or len(tail) < 2 or not all(math.isfinite(v) for v in tail):
        return None
    mean = statistics.fmean(tail)
    var = statistics.variance(tail)
    return {"var": var, "mean": mean, "cv": math.sqrt(var) / mean if mean > 0 else None, "n": len(tail)}


def effective_depth(alphas: dict[str, list[float]]) -> float:
    """Expected distance back in the history, Σ_k α_k·(K-1-k) with α oldest first, averaged over sites:
    0 for a plain residual model, up to H-1 when every site reads only its oldest state."""
    if not alphas:
        return 0.0
    per_site = [sum(a * (len(alpha) - 1 - k) for k, a in enumerate(alpha)) for alpha in alphas.values()]
    return statistics.fmean(per_site)


def mixing_fraction(alphas: dict[str, list[float]], threshold: float = 0.99) -> float:
    """Fraction of the sites that could mix (K > 1) whose latest weight is below ``threshold``: how many sites
    moved away from the plain residual at all."""
    open_sites = [alpha for alpha in alphas.values() if len(alpha) > 1]
    return sum(alpha[-1] < threshold for alpha in open_sites) / len(open_sites) if open_sites else 0.0


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell_key(run: dict) -> tuple:
    return run["depth"], run["variant"], run["lr"]


def summarize(runs: list[dict], cells: list[tuple]) -> list[dict]:
    """One row per (depth, variant, lr): mean ± std over seeds of each metric, divergences counted.
    Means leave out diverged seeds (their count is beside them); cells whose runs were skipped say so."""
    by_cell: dict[tuple, list[dict]] = {}
    for run in runs:
        by_cell.setdefault(_cell_key(run), []).append(run)
    rows = []
    for depth, variant, lr in cells:
        group = sorted(by_cell.get((depth, variant, lr), []), key=lambda r: r["seed"])
        done = [r for r in group if not r.get("skipped")]
        ok = [r for r in done if not r["diverged"]]
        val_mean, val_std = _spread([r["final_val_loss"] for r in ok])
        var_mean, var_std = _spread([r["grad_noise"]["var"] for r in ok if r["grad_noise"]])
        cv_mean, cv_std = _spread([r["grad_noise"]["cv"] for r in ok if r["grad_noise"]])
        gn_mean, _ = _spread([r["grad_noise"]["mean"] for r in ok if r["grad_noise"]])
        eff_mean, eff_std = _spread([r["effective_depth"] for r in ok])
        mixing_mean, _ = _spread([r["mixing_fraction"] for r in ok])
        time_mean, _ = _spread([r["step_time_s"] for r in done])
        rows.append(
            {
                "depth": depth,
                "variant": variant,
                "lr": lr,
                "seeds": [r["seed"] for r in done],
                "skipped": len(group) - len(done),
                "diverged": sum(r["diverged"] for r in done),
                "val_loss_mean": val_mean,
                "val_loss_std": val_std,
                "grad_var_mean": var_mean,
                "grad_var_std": var_std,
                "grad_cv_mean": cv_mean,
                "grad_cv_std": cv_std,
                "grad_norm_mean": gn_mean,
                "effective_depth_mean": eff_mean,
                "effective_depth_std": eff_std,
                "mixing_fraction_mean": mixing_mean,
                "step_time_s": time_mean,
            }
        )
    return rows


def paired(runs: list[dict], cells: list[tuple]) -> list[dict]:
    """Per (depth, variant, lr), the seed-by-seed difference to the residual baseline (same seed = same
    init and same batches): validation loss delta and gradient-variance ratio, mean ± std, and in how many
    seeds the variant was better. Only seeds where both runs finished without diverging count."""
    index = {(r["depth"], r["variant"], r["lr"], r["seed"]): r for r in runs if not r.get("skipped")}
    rows = []
    for depth, variant, lr in cells:
        if variant == BASELINE:
            continue
        deltas, ratios = [], []
        for seed in sorted({key[3] for key in index}):
            run, base = index.get((depth, variant, lr, seed)), index.get((depth, BASELINE, lr, seed))
            if run is None or base is None or run["diverged"] or base["diverged"]:
                continue
            deltas.append(run["final_val_loss"] - base["final_val_loss"])
            if run["grad_noise"] and base["grad_noise"] and base["grad_noise"]["var"] > 0:
                ratios.append(run["grad_noise"]["var"] / base["grad_noise"]["var"])
        d_mean, d_std = _spread(deltas)
        r_mean, r_std = _spread(ratios)
        rows.append(
            {
                "depth": depth,
                "variant": variant,
                "lr": lr,
                "pairs": len(deltas),
                "val_delta_mean": d_mean,
                "val_delta_std": d_std,
                "better": sum(x < 0 for x in deltas),
                "grad_var_ratio_mean": r_mean,
                "grad_var_ratio_std": r_std,
            }
        )
    return rows
