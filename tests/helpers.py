"""Small helpers shared by the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def perturb_mixing(model: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every ``mhc.*`` logit, so that the sites really mix."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("mhc."):
                p.add_(torch.randn(p.shape, generator=gen).to(p.device) * scale)
    return model


class NonMetaOutputs(TorchDispatchMode):
    """Records every aten op that returns a tensor off the ``meta`` device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves(out)
        if any(isinstance(t, torch.Tensor) and t.device.type != "meta" for t in leaves):
            self.ops.append(str(func))
        return out


REPO = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` in the repository root; asserts it exits 0 (stderr's tail otherwise)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done
