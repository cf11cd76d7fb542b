"""The sizes of ``--quick`` (CI smoke, under 3 minutes) and ``--full`` (the study, under 45 minutes on 2 cores)."""

from __future__ import annotations

import dataclasses

from .variants import STUDIED


@dataclasses.dataclass(frozen=True)
class Profile:
    """Everything that decides what the study trains; recorded in results.json."""

    name: str
    depths: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    variants: tuple[str, ...] = STUDIED
    dim: int = 64
    heads: int = 4
    batch: int = 16
    length: int = 64
    steps: int = 300
    warmup: int = 30  # linear warm-up, then cosine decay to 10% of the peak learning rate
    weight_decay: float = 0.1  # AdamW, on matrices and embeddings only (never on biases, norms or mixing logits)
    eval_every: int = 50  # validation loss for the curves
    val_windows: int = 64  # fixed held-out windows (the same for every run)
    noise_window: int = 100  # gradient noise: variance of the global gradient norm over the last N steps
    max_history: int = 4
    data_bytes: int = 2_000_000
    budget_s: float = 2400.0  # no new run starts after this; the runs left are reported as skipped
    seed_overrides: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (variant, seeds) run with fewer seeds

    def cells(self) -> list[tuple[int, str, float]]:
        return [(d, v, lr) for d in self.depths for v in self.variants for lr in self.lrs]

    def seeds_for(self, variant: str) -> tuple[int, ...]:
        return dict(self.seed_overrides).get(variant, self.seeds)

    def runs(self) -> list[tuple[int, str, float, int]]:
        return [(d, v, lr, s) for d, v, lr in self.cells() for s in self.seeds_for(v)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


QUICK = Profile(
    name="quick",
    depths=(2, 6),
    lrs=(3e-3, 3e-2),
    seeds=(0, 1, 2),
    dim=32,
    batch=8,
    length=32,
    steps=40,
    warmup=4,
    eval_every=10,
    val_windows=16,
    noise_window=10,
    data_bytes=400_000,
    budget_s=150.0,
)

FULL = Profile(
    name="full",
    depths=(8, 32, 64),
    lrs=(3e-3, 1e-2),
    seeds=(0, 1, 2),
    batch=8,
    steps=300,
    budget_s=2700.0,  # 45 min: 90 runs take about 40 min on a quiet 2-core machine
)

PROFILES = {p.name: p for p in (QUICK, FULL)}
