"""One run of the study: build, convert and train one model; return what the metrics need.

The same seed gives every variant the same initial weights (`convert` keeps the original function at
init for residual and mhc) and the same sequence of training batches, so runs are paired across variants.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch.nn import functional as F

import mhc_fx
from mhc_fx.demo.data import batches
from mhc_fx.demo.model import GPT

from . import metrics
from .profiles import Profile
from .variants import VARIANTS

VOCAB = 256
VAL_SEED = 12345  # the held-out windows: the same for every run


def build(profile: Profile, depth: int, variant: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    base = GPT(VOCAB, profile.dim, profile.heads, depth, profile.length, dropout=0.0)
    return mhc_fx.convert(base, max_history=profile.max_history, **VARIANTS[variant])


def optimizer(model: torch.nn.Module, profile: Profile, lr: float) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices and embeddings only, never on the mixing logits (decay would pull
    them towards uniform mixing)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": profile.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def lr_factor(step: int, profile: Profile) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the peak."""
    if step < profile.warmup:
        return (step + 1) / profile.warmup
    progress = (step - profile.warmup) / max(1, profile.steps - profile.warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _loss(model, x, y) -> torch.Tensor:
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _evaluate(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        loss = _loss(model, x, y).item()
    model.train()
    return loss


def run(profile: Profile, depth: int, variant: str, lr: float, seed: int, train_data, val_data) -> dict:
    """Train one model for ``profile.steps`` steps (or until the loss is not finite)."""
    model = build(profile, depth, variant, seed).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(model, profile, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, profile))
    stream = batches(train_data, profile.batch, profile.length, torch.Generator().manual_seed(1000 + seed))
    vx, vy = next(batches(val_data, profile.val_windows, profile.length, torch.Generator().manual_seed(VAL_SEED)))

    initial_val = _evaluate(model, vx, vy)
    val_curve = [(0, initial_val)]
    train_loss, grad_norm, seconds = [], [], []
    failure = None
    for step in range(1, profile.steps + 1):
        x, y = next(stream)
        t0 = time.perf_counter()
        loss = _loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]).item()
        opt.step()
        sched.step()
        seconds.append(time.perf_counter() - t0)
        value = loss.item()
        train_loss.append(value)
        grad_norm.append(norm)
        if not (math.isfinite(value) and math.isfinite(norm)):
            failure = f"non-finite {'loss' if not math.isfinite(value) else 'gradient norm'} at step {step}"
            break
        if step % profile.eval_every == 0 or step == profile.steps:
            val_curve.append((step, _evaluate(model, vx, vy)))

    final_val = val_curve[-1][1] if failure is None else float("nan")
    if failure is None and not final_val < initial_val:
        failure = f"final validation loss {final_val:.3f} not below its initial value {initial_val:.3f}"
    alphas = {
        site: [metrics.finite_or_none(round(a, 5)) for a in alpha.tolist()]
        for site, alpha in mhc_fx.mixing_weights(model).items()
    }
    finite_alphas = all(a is not None for alpha in alphas.values() for a in alpha)
    timed = seconds[5:] or seconds
    return {
        "depth": depth,
        "variant": variant,
        "lr": lr,
        "seed": seed,
        "steps_done": len(train_loss),
        "diverged": failure is not None,
        "divergence": failure,
        "initial_val_loss": metrics.finite_or_none(initial_val),
        "final_val_loss": metrics.finite_or_none(final_val) if failure is None else None,
        "final_val_loss_raw": metrics.finite_or_none(final_val),
        "final_train_loss": metrics.finite_or_none(statistics.fmean(train_loss[-profile.noise_window :])),
        "grad_noise": metrics.gradient_noise(grad_norm, profile.noise_window),
        "effective_depth": metrics.effective_depth(alphas) if finite_alphas else None,
        "mixing_fraction": metrics.mixing_fraction(alphas) if finite_alphas else None,
        "step_time_s": statistics.median(timed),
        "val_curve": [[s, metrics.finite_or_none(v)] for s, v in val_curve],
        "train_loss": [metrics.finite_or_none(round(v, 5)) for v in train_loss],
        "grad_norm": [metrics.finite_or_none(round(v, 5)) for v in grad_norm],
        "alphas": alphas,
    }
