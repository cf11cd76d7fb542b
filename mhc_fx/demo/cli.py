"""``python -m mhc_fx`` / ``mhc-fx``: convert, check, compile and train a small model end to end.

With no arguments: a 4-layer byte-level GPT is converted (mode mhc, H = 4), its site
table printed, its equality with the original checked at init, both models compiled
with ``backend="mhc"`` and trained side by side on the Python standard library's own
source text; then the learned mixing weights and the time per step are printed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import torch
from torch import nn

from ..config import MODES
from ..transform import convert, explain, mixing_weights
from .data import batches, load_splits
from .model import GPT

VOCAB = 256


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mhc_fx", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=MODES, default="mhc", help="site mixing mode (default: mhc)")
    p.add_argument("--max-history", type=int, default=4, help="H, states mixed per site (default: 4)")
    p.add_argument(
        "--streams", type=int, default=1, help="n parallel residual streams, DeepSeek's mHC (default: 1, a window)"
    )
    p.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument(
        "--model",
        default=None,
        metavar="MODULE:ATTR",
        help="a factory returning an nn.Module mapping (B, T) byte tokens to (B, T, 256) logits",
    )
    p.add_argument("--no-compile", action="store_true", help="train eagerly instead of backend='mhc'")
    p.add_argument("--layers", type=int, default=4, help="built-in model depth (default: 4)")
    p.add_argument("--dim", type=int, default=64, help="built-in model width (default: 64)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64, help="tokens per sequence (default: 64)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    return p


def _factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--model must look like 'package.module:factory', got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr, None)
    if not callable(factory):
        raise ValueError(f"--model {spec!r}: {attr!r} is not a callable in {module_name!r}")
    return factory


def _build(args) -> nn.Module:
    if args.model is None:
        return GPT(vocab=VOCAB, dim=args.dim, heads=4, layers=args.layers, block_size=args.length)
    model = _factory(args.model)()
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model factory returned {type(model).__name__}, not an nn.Module")
    return model


def _check_positive(args) -> None:
    for name in ("max_history", "streams", "steps", "layers", "dim", "batch", "length"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")


def _progress(step: int, total: int, loss: float, started: float) -> None:
    done = int(30 * step / total)
    rate = step / max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r  [{'#' * done}{'.' * (30 - done)}] {step}/{total}  loss {loss:.3f}  {rate:.1f} it/s")
    if step == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _loss(model, x, y):
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def run(args) -> int:
    _check_positive(args)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    original = _build(args).to(device)
    window = {"max_history": args.max_history} if args.streams == 1 else {"streams": args.streams}
    model = convert(original, mode=args.mode, **window)
    print(explain(model))

    train, val = load_splits()
    data = batches(train, args.batch, args.length, torch.Generator().manual_seed(args.seed))
    x, y = (t.to(device) for t in next(data))
    with torch.no_grad():
        same = torch.equal(original.eval()(x), model.eval()(x))
    print(f"\nidentical to the original at init: {'yes' if same else 'no'} (mode={args.mode})")

    runs = {"residual": original.train(), args.mode: model.train()}
    if not args.no_compile:
        runs = {name: torch.compile(m, backend="mhc") for name, m in runs.items()}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=args.lr) for name, m in runs.items()}
    seconds = {name: [] for name in runs}
    print(
        f"training {args.steps} steps on the Python standard library's source ({len(train):,} bytes), "
        f"{'compiled with backend=mhc' if not args.no_compile else 'eager'}:"
    )
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = (t.to(device) for t in next(data))
        for name, m in runs.items():  # interleaved: both models see the same batch and machine state
            t0 = time.perf_counter()
            loss = _loss(m, x, y)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            seconds[name].append(time.perf_counter() - t0)
        _progress(step, args.steps, loss.item(), started)

    vx, vy = (t.to(device) for t in next(batches(val, 64, args.length, torch.Generator().manual_seed(1))))
    print("\nvalidation loss (64 held-out windows):")
    with torch.no_grad():
        for name, m in runs.items():
            print(f"  {name:9s} {_loss(m.eval(), vx, vy).item():.4f}")
    print("\nlearned mixing weights (alpha: oldest state first; n streams: the static H_pre / H_post):")
    for site, alpha in mixing_weights(model).items():
        if isinstance(alpha, dict):
            alpha = torch.cat([alpha["pre"], alpha["post"]])
        print(f"  {site:24s} " + " ".join(f"{a:6.3f}" for a in alpha.tolist()))
    skip = min(10, args.steps // 2)  # leave out warm-up and compilation
    median = {name: sorted(s[skip:])[len(s[skip:]) // 2] for name, s in seconds.items()}
    ratio = median[args.mode] / median["residual"]
    print(
        f"\ntime per step (median after {skip} warm-up steps): residual {median['residual'] * 1e3:.1f} ms, "
        f"{args.mode} {median[args.mode] * 1e3:.1f} ms ({(ratio - 1) * 100:+.1f}%)"
    )
    return 0 if same or args.mode == "hc" else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except Exception as exc:  # one clear line, non-zero exit
        print(f"mhc_fx: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
