"""The mixing variants compared: name -> keyword arguments of `mhc_fx.convert` (max_history comes from
the profile). ``residual`` goes through `convert` too, so every variant runs the same code path."""

from __future__ import annotations

VARIANTS: dict[str, dict] = {
    "residual": {"mode": "residual"},
    "hc": {"mode": "hc"},
    "mhc": {"mode": "mhc", "constraint": "simplex"},
    "mhc-id": {"mode": "mhc", "constraint": "identity", "epsilon": 0.05},
    "mhc-stoch": {"mode": "mhc", "constraint": "simplex", "stochastic": True},
    # not in the default grid (profiles.STUDIED): τ = 4 shrinks the Gumbel noise of mhc-stoch 4x
    "mhc-stoch-t4": {"mode": "mhc", "constraint": "simplex", "stochastic": True, "temperature": 4.0},
}

#: The variants of the study's grid; the others run on request (``--variants``).
STUDIED = ("residual", "hc", "mhc", "mhc-id", "mhc-stoch")

BASELINE = "residual"


def describe(name: str) -> str:
    """``mode=mhc, constraint=identity, epsilon=0.05`` for the tables."""
    return ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
