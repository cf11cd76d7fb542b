"""`mhc.utils.visualization`: the package's plots of mixing weights, gradient flow, one layer's
history contribution and a training dashboard, with its signatures.

matplotlib is imported only when a plot is drawn (``pip install "mhc_fx[plot]"``); importing this
module never needs it (the package's ``import mhc`` did). Each plot returns a
``matplotlib.figure.Figure`` that pyplot does not keep open, so loops do not pile figures up.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import nn as fx_nn
from ...projections import mixing_weights
from ...transform import is_converted
from ...transform import mixing_weights as converted_weights

PLOT_EXTRA = 'pip install "mhc_fx[plot]"'


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"the mhc_fx.compat plots need matplotlib, which is not installed: {PLOT_EXTRA}") from exc
    return Figure(figsize=figsize, layout="constrained")


def _save(fig, save_path) -> None:
    if save_path:
        fig.savefig(save_path, dpi=300, bbox_inches="tight")


def extract_mixing_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: alpha}`` for every `MHCSkip` of ``model`` that learns weights (residual mode
    has none): the weights over its full window, oldest first, deterministic (as in eval), on the
    CPU. A model converted by `mhc_fx.convert` adds its sites (`mhc_fx.mixing_weights`)."""
    weights = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, fx_nn.MHCSkip) and module.mixing_logits is not None:
                weights[name] = mixing_weights(module.mixing_logits.detach(), module.config, training=False).cpu()
        if is_converted(model):
            weights.update({name: alpha.cpu() for name, alpha in converted_weights(model).items()})
    return weights


def plot_mixing_weights(model: nn.Module, save_path=None, figsize=(12, 6), cmap: str = "viridis"):
    """Heat map of `extract_mixing_weights`: one row per layer, one column per history position
    (the latest state rightmost; shorter windows are right-aligned). ``ValueError`` when the model
    has no mixing weights; saved to ``save_path`` (300 dpi) when given."""
    import numpy as np

    weights = extract_mixing_weights(model)
    if not weights:
        raise ValueError("no MHCSkip layer with mixing weights (or converted site) found in the model")
    width = max(len(a) for a in weights.values())
    grid = np.full((len(weights), width), np.nan)
    for row, alpha in enumerate(weights.values()):
        grid[row, width - len(alpha) :] = alpha.float().numpy()
    fig = _figure(figsize)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1)
    ax.set_yticks(range(len(weights)), list(weights))
    ax.set_xticks(range(width), [f"t-{width - 1 - j}" if j < width - 1 else "t" for j in range(width)])
    ax.set_xlabel("history position (t = the latest state)")
    ax.set_ylabel("layer")
    ax.set_title("mixing weights across layers")
    fig.colorbar(image, ax=ax, label="weight (α)")
    _save(fig, save_path)
    return fig


def plot_gradient_flow(
    model: nn.Module, input_data, target=None, loss_fn=None, save_path=None, figsize=(10, 6)
):  # fmt: skip
    """Bar chart of each parameter's gradient norm after one backward pass of
    ``loss_fn(model(input_data), target)`` (``model(input_data).mean()`` without both), run in
    training mode. As in the package it zeroes the model's gradients first and leaves the new ones;
    unlike it, it puts the model back in the mode it was in."""
    was_training = model.training
    model.train()
    try:
        model.zero_grad()
        output = model(input_data)
        loss = loss_fn(output, target) if (loss_fn is not None and target is not None) else output.mean()
        loss.backward()
    finally:
        model.train(was_training)
    norms = {name: float(p.grad.norm()) for name, p in model.named_parameters() if p.grad is not None}
    if not norms:
        raise ValueError("no parameter of the model received a gradient")
    fig = _figure(figsize)
    ax = fig.subplots()
    ax.bar(range(len(norms)), list(norms.values()), color="steelblue", edgecolor="black", alpha=0.7)
    ax.set_xticks(range(len(norms)), list(norms), rotation=45, ha="right")
    mean = sum(norms.values()) / len(norms)
    ax.axhline(mean, color="r", linestyle="--", label=f"mean: {mean:.4f}")
    ax.set_xlabel("parameter")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient flow across layers")
    ax.legend()
    _save(fig, save_path)
    return fig


def plot_history_contribution(alphas: torch.Tensor, layer_name: str = "MHCSkip", save_path=None, figsize=(8, 5)):
    """Bar chart of one layer's weights ``alphas`` (1-D, oldest first), the latest state
    highlighted and each bar labelled with its percentage."""
    values = torch.as_tensor(alphas).detach().cpu().float()
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(f"alphas must be a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    k = values.numel()
    fig = _figure(figsize)
    ax = fig.subplots()
    colors = ["steelblue"] * (k - 1) + ["coral"]
    bars = ax.bar(range(k), values.tolist(), color=colors, edgecolor="black", alpha=0.7)
    bars[-1].set_label("latest state")
    for bar, value in zip(bars, values.tolist()):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{value * 100:.1f}%", ha="center", va="bottom")
    ax.set_xticks(range(k), [f"t-{k - 1 - i}" for i in range(k)])
    ax.set_ylim(0, 1)
    ax.set_xlabel("history position")
    ax.set_ylabel("mixing weight (α)")
    ax.set_title(f"historical state contributions: {layer_name}")
    ax.legend()
    _save(fig, save_path)
    return fig


def create_training_dashboard(metrics_dict: dict, save_path=None, figsize=(15, 10)):
    """A figure of the curves in ``metrics_dict``: ``"loss"`` and ``"accuracy"`` (lists of
    numbers per epoch) on top, ``"mixing_weights_history"`` (one list of weights per epoch) below.
    Missing keys leave their panel out; an unknown key is a ``ValueError``."""
    known = ("loss", "accuracy", "mixing_weights_history")
    unknown = sorted(set(metrics_dict) - set(known))
    if unknown:
        raise ValueError(f"metrics_dict: unknown keys {unknown}; allowed: {list(known)}")
    fig = _figure(figsize)
    grid = fig.add_gridspec(2, 2)
    for col, (key, color, label) in enumerate((("loss", "steelblue", "loss"), ("accuracy", "forestgreen", "accuracy"))):
        if key in metrics_dict:
            ax = fig.add_subplot(grid[0, col])
            ax.plot(list(metrics_dict[key]), color=color, linewidth=2)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.set_title(f"training {label}")
            ax.grid(alpha=0.3)
    if "mixing_weights_history" in metrics_dict:
        history = torch.as_tensor([list(map(float, w)) for w in metrics_dict["mixing_weights_history"]])
        ax = fig.add_subplot(grid[1, :])
        k = history.shape[1] if history.dim() == 2 else 0
        for i in range(k):
            ax.plot(history[:, i].tolist(), linewidth=2, label="α_latest" if i == k - 1 else f"α_{i}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mixing weight")
        ax.set_title("mixing weights evolution")
        if k:
            ax.legend(loc="best")
        ax.grid(alpha=0.3)
    fig.suptitle("mHC training dashboard")
    _save(fig, save_path)
    return fig
