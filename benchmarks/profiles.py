"""The sizes of a run: ``--full`` (the issue's shapes) and ``--quick`` (a CI smoke test, < 3 min on 2 cores)."""

from __future__ import annotations

import dataclasses

import torch

from .mixing import LABELS as MIX_VARIANTS
from .models import GPTSize

_ALL = ("residual", "convert_residual", "convert_hc", "convert_mhc", "mhc_package", "hyper_connections")
_OURS = ("residual", "convert_residual", "convert_hc", "convert_mhc")


@dataclasses.dataclass(frozen=True)
class Profile:
    """Everything that differs between --quick and --full."""

    name: str
    bandwidth_mb: float
    bandwidth_rounds: int
    mix_shape: tuple[int, ...]
    mix_dtypes: tuple[torch.dtype, ...]
    mix_ks: tuple[int, ...]
    mix_variants: tuple[str, ...]
    mix_rounds: int
    mix_min_sample_s: float
    gpt: GPTSize
    history: int
    streams: int
    e2e_plan: dict
    e2e_skipped: dict
    e2e_rounds: dict
    e2e_min_sample_s: float
    scaling_depths: tuple[int, ...]
    scaling_width: int
    scaling_rounds: int
    k_sweep_extra: tuple[int, ...]
    k_sweep_variants: tuple[str, ...]
    #: the most seconds the whole run may wait for other processes to quiet down
    quiet_budget_s: float

    def scaling_sizes(self) -> list[GPTSize]:
        w = self.scaling_width
        return [GPTSize(layers=d, dim=w, heads=4, seq=64, batch=2) for d in self.scaling_depths]

    def describe(self) -> dict:
        out = dataclasses.asdict(self)
        out["mix_dtypes"] = [str(d).removeprefix("torch.") for d in self.mix_dtypes]
        out["e2e_skipped"] = [{"mode": m, "model": n, "reason": r} for (m, n), r in self.e2e_skipped.items()]
        return out


_HC_COMPILE = (
    "skipped in --full: torch.compile of hyper-connections' GPT (einops-heavy, thousands of traced calls) "
    "takes minutes on 2 cores; run it eager only"
)

FULL = Profile(
    name="full",
    bandwidth_mb=256,
    bandwidth_rounds=7,
    mix_shape=(8, 512, 768),
    mix_dtypes=(torch.float32, torch.bfloat16),
    mix_ks=(2, 4, 8),
    mix_variants=tuple(MIX_VARIANTS),
    mix_rounds=9,
    mix_min_sample_s=0.05,
    gpt=GPTSize(layers=12, dim=384, heads=6, seq=256, batch=8),
    history=4,
    streams=4,
    e2e_plan={"eager": _ALL, "inductor": _OURS + ("mhc_package",), "mhc": _OURS},
    e2e_skipped={("inductor", "hyper_connections"): _HC_COMPILE},
    e2e_rounds={"train": 7, "infer": 9},
    e2e_min_sample_s=0.0,
    scaling_depths=(12, 48, 96),
    scaling_width=64,
    scaling_rounds=3,
    k_sweep_extra=(1, 16),
    k_sweep_variants=("ours_eager", "ours_mhc", "mhc_pkg_eager"),
    quiet_budget_s=300,
)

_QUICK_SKIP = 'not run in --quick (compiled: residual and convert_mhc under backend="mhc" only)'

QUICK = Profile(
    name="quick",
    bandwidth_mb=64,
    bandwidth_rounds=3,
    mix_shape=(8, 512, 768),
    mix_dtypes=(torch.float32, torch.bfloat16),
    mix_ks=(4,),
    mix_variants=("ours_eager", "ours_mhc", "mhc_pkg_eager"),
    mix_rounds=3,
    mix_min_sample_s=0.02,
    gpt=GPTSize(layers=2, dim=64, heads=4, seq=64, batch=2),
    history=4,
    streams=4,
    e2e_plan={"eager": _ALL, "mhc": ("residual", "convert_mhc")},
    e2e_skipped={
        **{("inductor", name): _QUICK_SKIP for name in _ALL},
        **{("mhc", name): _QUICK_SKIP for name in ("convert_residual", "convert_hc")},
    },
    e2e_rounds={"train": 3, "infer": 3},
    e2e_min_sample_s=0.05,
    scaling_depths=(1, 2),
    scaling_width=32,
    scaling_rounds=2,
    k_sweep_extra=(1,),
    k_sweep_variants=("ours_eager", "ours_mhc"),
    quiet_budget_s=0,
)

PROFILES = {"quick": QUICK, "full": FULL}
