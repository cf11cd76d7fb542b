"""results.md: the study's markdown tables, from the summary rows of `metrics`."""

from __future__ import annotations

from .profiles import Profile


def _grid(profile: Profile, rows: list[dict], cell, variants=None) -> list[str]:
    """A table with one row per (depth, variant) and one column per learning rate."""
    index = {(r["depth"], r["variant"], r["lr"]): r for r in rows}
    variants = variants or profile.variants
    lines = ["| depth | variant | " + " | ".join(f"lr {lr:g}" for lr in profile.lrs) + " |"]
    lines.append("|---:|---|" + "---:|" * len(profile.lrs))
    for depth in profile.depths:
        for variant in variants:
            values = [cell(index[(depth, variant, lr)]) if (depth, variant, lr) in index else "" for lr in profile.lrs]
            lines.append(f"| {depth} | {variant} | " + " | ".join(values) + " |")
    return lines


def _pm(mean, std, digits=3, signed=False) -> str:
    if mean is None:
        return "—"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}"


def _val(row: dict) -> str:
    n = len(row["seeds"])
    if n == 0:
        return "skipped"
    if row["val_loss_mean"] is None:
        return f"**diverged {row['diverged']}/{n}**"
    ok = n - row["diverged"]
    text = _pm(row["val_loss_mean"], row["val_loss_std"]) if ok > 1 else f"{row['val_loss_mean']:.3f}"
    if row["diverged"]:
        text += f" (**{row['diverged']}/{n} diverged**)"
    if n < 3 or row["skipped"]:
        text += f" ({n} seed{'s' * (n > 1)})"
    return text


def _delta(row: dict) -> str:
    if not row["pairs"]:
        return "—"
    return f"{_pm(row['val_delta_mean'], row['val_delta_std'], signed=True)} ({row['better']}/{row['pairs']} better)"


def _ratio(row: dict) -> str:
    return _pm(row["grad_var_ratio_mean"], row["grad_var_ratio_std"], digits=2)


def _cv(row: dict) -> str:
    return _pm(row["grad_cv_mean"], row["grad_cv_std"], digits=3)


def _eff(row: dict) -> str:
    if row["effective_depth_mean"] is None:
        return "—"
    mixing = f" ({row['mixing_fraction_mean']:.0%} mixing)"
    return _pm(row["effective_depth_mean"], row["effective_depth_std"], digits=2) + mixing


def _ms(row: dict) -> str:
    return "—" if row["step_time_s"] is None else f"{row['step_time_s'] * 1e3:.0f}"


def _parts(meta: dict) -> list[str]:
    parts = meta.get("parts", [])
    if len(parts) < 2:
        return []
    lines = ["", f"Run in {len(parts)} parts (`--resume`; runs are deterministic, so the grid is the same):", ""]
    for p in parts:
        lines.append(f"- `{p['command']}`: {p['runs']} runs, {p['runtime_s']:.0f} s, {p.get('date_utc', '')}")
    return lines


def markdown(profile: Profile, summary: list[dict], paired: list[dict], meta: dict) -> str:
    mixing = [v for v in profile.variants if v != "residual"]
    out = [
        f"# mhc_fx training-quality study ({profile.name})",
        "",
        f"`{meta['command']}` — {(meta.get('parts') or [meta['machine']])[0]['date_utc']}, {meta['machine']['cpu']}, "
        f"{meta['workers']} worker process(es) x 1 thread, {meta['execution']}, runtime {meta['runtime_s']:.0f} s.",
        *_parts(meta),
        "",
        f"Byte-level pre-norm GPT (d={profile.dim}, {profile.heads} heads, T={profile.length}, batch {profile.batch}), "
        f"{profile.steps} AdamW steps, max_history={profile.max_history}, seeds {list(profile.seeds)}.",
        "",
        f"## Validation loss at {profile.steps} steps (nats/byte, mean ± std over seeds; diverged seeds left out "
        "of the mean and counted)",
        "",
        *_grid(profile, summary, _val),
        "",
        "## Paired difference to residual (same seed = same init and batches; negative = better)",
        "",
        *_grid(profile, paired, _delta, mixing),
        "",
        f"## Gradient noise: variance of the global gradient norm over the last {profile.noise_window} steps, "
        "ratio to residual (paired, mean ± std; < 1 = less noise)",
        "",
        *_grid(profile, paired, _ratio, mixing),
        "",
        "Coefficient of variation (std / mean) of the gradient norm over the same steps:",
        "",
        *_grid(profile, summary, _cv),
        "",
        "## Effective depth: Σ_k α_k·(K-1-k) averaged over sites (0 = plain residual; at most H-1); in brackets "
        "the share of sites with K > 1 whose latest weight fell below 0.99",
        "",
        *_grid(profile, summary, _eff, mixing),
        "",
        f"## Time per step (ms, median; {meta['execution']}, {meta['workers']} concurrent worker(s))",
        "",
        *_grid(profile, summary, _ms),
        "",
    ]
    return "\n".join(out)
