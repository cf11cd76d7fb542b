"""Plots from results.json data: loss curves per depth, validation loss against depth, and α heat maps per
site of the final models. Needs matplotlib; `draw` returns a note instead of failing when it is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .profiles import Profile

COLORS = {"residual": "k", "hc": "tab:orange", "mhc": "tab:blue", "mhc-id": "tab:green", "mhc-stoch": "tab:purple"}
DPI = 80


def _save(fig, path: Path) -> None:
    """PNG at a low dpi, reduced to a 256-colour palette (a few tens of kB: small enough to commit)."""
    fig.savefig(path, dpi=DPI)
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def _label(profile: Profile, variant: str) -> str:
    seeds = len(profile.seeds_for(variant))
    return variant if seeds == len(profile.seeds) else f"{variant} ({seeds} seed{'s' * (seeds > 1)})"


def _smooth(values: list, width: int) -> np.ndarray:
    x = np.array([np.nan if v is None else v for v in values], dtype=float)
    if width <= 1 or len(x) < width:
        return x
    kernel = np.ones(width) / width
    return np.convolve(x, kernel, mode="valid")


def _runs(records: list[dict], depth: int, variant: str, lr: float) -> list[dict]:
    return [r for r in records if not r.get("skipped") and (r["depth"], r["variant"], r["lr"]) == (depth, variant, lr)]


def _paired_delta(records, depth, variant, lr, width) -> np.ndarray | None:
    """Smoothed train loss minus the residual run of the same seed, mean over seeds (both not diverged)."""
    base = {r["seed"]: r for r in _runs(records, depth, "residual", lr) if not r["diverged"]}
    deltas = [
        _smooth(r["train_loss"], width) - _smooth(base[r["seed"]]["train_loss"], width)
        for r in _runs(records, depth, variant, lr)
        if not r["diverged"] and r["seed"] in base
    ]
    return np.vstack(deltas).mean(0) if deltas else None


def loss_curves(profile: Profile, records: list[dict], depth: int, path: Path) -> None:
    """Top row: train loss per variant (mean over seeds, band = min..max; dotted = a diverged seed).
    Bottom row: the paired difference to residual (same seed), mean over seeds; below 0 = better."""
    from matplotlib.figure import Figure

    width = max(1, profile.steps // 20)
    fig = Figure(figsize=(4.2 * len(profile.lrs), 5.6), layout="constrained")
    axes = fig.subplots(2, len(profile.lrs), sharex=True, squeeze=False, height_ratios=(3, 2))
    for col, lr in enumerate(profile.lrs):
        ax, bottom = axes[0][col], axes[1][col]
        low, high = np.inf, -np.inf
        for variant in profile.variants:
            color = COLORS.get(variant)
            runs = _runs(records, depth, variant, lr)
            ok = [_smooth(r["train_loss"], width) for r in runs if not r["diverged"]]
            if ok:
                stack = np.vstack(ok)
                steps = np.arange(stack.shape[1]) + width
                ax.plot(steps, stack.mean(0), color=color, lw=1.3, label=_label(profile, variant))
                ax.fill_between(steps, stack.min(0), stack.max(0), color=color, alpha=0.12, lw=0)
                low, high = min(low, np.nanmin(stack)), max(high, np.nanmax(stack[:, stack.shape[1] // 5 :]))
            for r in runs:
                if r["diverged"]:
                    curve = _smooth(r["train_loss"], width)
                    ax.plot(np.arange(len(curve)) + width, curve, color=color, lw=0.8, ls=":")
                    last = curve[-1] if len(curve) and np.isfinite(curve[-1]) else high
                    ax.plot([r["steps_done"]], [last], marker="x", color=color)
            delta = _paired_delta(records, depth, variant, lr, width) if variant != "residual" else None
            if delta is not None:
                bottom.plot(np.arange(len(delta)) + width, delta, color=color, lw=1.1, label=variant)
        if np.isfinite(low):
            ax.set_ylim(low - 0.05, high + 0.3)
        ax.set_title(f"depth {depth}, lr {lr:g}")
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_xlabel("step")
        for a in (ax, bottom):
            a.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"train loss (moving mean of {width})")
    axes[1][0].set_ylabel("minus residual (same seed)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7)
    _save(fig, path)


def val_vs_depth(profile: Profile, summary: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(profile.lrs), 3.4), layout="constrained")
    axes = fig.subplots(1, len(profile.lrs), sharey=True, squeeze=False)[0]
    offsets = np.linspace(-0.06, 0.06, len(profile.variants))
    for ax, lr in zip(axes, profile.lrs):
        for off, variant in zip(offsets, profile.variants):
            rows = [r for r in summary if r["variant"] == variant and r["lr"] == lr and r["val_loss_mean"] is not None]
            xs = [np.log2(r["depth"]) + off for r in rows]
            seeds = len(profile.seeds_for(variant))
            ax.errorbar(
                xs,
                [r["val_loss_mean"] for r in rows],
                yerr=[r["val_loss_std"] for r in rows],
                color=COLORS.get(variant),
                marker="o",
                ms=3,
                capsize=2,
                lw=1,
                ls="-" if seeds == len(profile.seeds) else ":",
                label=_label(profile, variant),
            )
        ax.set_xticks([np.log2(d) for d in profile.depths], [str(d) for d in profile.depths])
        ax.set_xlabel("depth (layers)")
        ax.set_title(f"lr {lr:g}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation loss at {profile.steps} steps")
    axes[-1].legend(fontsize=7)
    _save(fig, path)


def _mean_alphas(runs: list[dict], width: int) -> tuple[np.ndarray, list[str]] | None:
    ok = [r for r in runs if not r["diverged"] and r.get("alphas")]
    if not ok:
        return None
    sites = list(ok[0]["alphas"])
    grid = np.full((len(ok), len(sites), width), np.nan)
    for i, r in enumerate(ok):
        for j, site in enumerate(sites):
            alpha = r["alphas"][site]
            grid[i, j, width - len(alpha) :] = alpha
    return grid.mean(0), sites


def alpha_maps(profile: Profile, records: list[dict], depth: int, path: Path) -> None:
    from matplotlib.figure import Figure

    mixing = [v for v in profile.variants if v != "residual"]
    width = profile.max_history
    height = 1.2 + 0.9 * len(profile.lrs) * max(1.0, depth / 16)
    fig = Figure(figsize=(1.9 * len(mixing) + 1.0, height), layout="constrained")
    axes = fig.subplots(len(profile.lrs), len(mixing), squeeze=False, sharey=True)
    image = None
    for row, lr in enumerate(profile.lrs):
        for col, variant in enumerate(mixing):
            ax = axes[row][col]
            found = _mean_alphas(_runs(records, depth, variant, lr), width)
            ax.set_title(f"{variant}, lr {lr:g}", fontsize=8)
            ax.set_xticks(
                range(width), [f"t-{width - 1 - j}" if j < width - 1 else "t" for j in range(width)], fontsize=7
            )
            if found is None:
                ax.text(0.5, 0.5, "all seeds\ndiverged", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            grid, sites = found
            eff = np.nanmean([np.nansum(row * np.arange(width - 1, -1, -1)) for row in grid])
            ax.set_title(f"{variant}, lr {lr:g}\neff. depth {eff:.2f}", fontsize=8)
            image = ax.imshow(
                np.ma.masked_invalid(grid), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
            )
            step = max(1, len(sites) // 8)
            ax.set_yticks(range(0, len(sites), step), [sites[i] for i in range(0, len(sites), step)], fontsize=6)
    if image is not None:
        fig.colorbar(image, ax=axes, label="α (mean over seeds)", shrink=0.6)
    fig.suptitle(
        f"depth {depth}: learned mixing weights per site (rows: sites in order; t = latest stream)", fontsize=9
    )
    _save(fig, path)


def draw(profile: Profile, records: list[dict], summary: list[dict], out: Path) -> list[str] | str:
    """Write every plot under ``out``; the file names, or a note saying why there are none."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots skipped: matplotlib is not installed (pip install matplotlib)"
    names = []
    val_vs_depth(profile, summary, out / "val_vs_depth.png")
    names.append("val_vs_depth.png")
    for depth in profile.depths:
        loss_curves(profile, records, depth, out / f"loss_curves_d{depth}.png")
        names.append(f"loss_curves_d{depth}.png")
        if any(v != "residual" for v in profile.variants):
            alpha_maps(profile, records, depth, out / f"alphas_d{depth}.png")
            names.append(f"alphas_d{depth}.png")
    return names
