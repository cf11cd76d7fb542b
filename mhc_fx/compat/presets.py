"""`mhc.presets`: the package's named presets, dicts of its `MHCConfig` fields."""

from __future__ import annotations

_PRESETS: dict[str, dict] = {
    "stable": {"mode": "mhc", "constraint": "identity", "epsilon": 0.1, "temperature": 1.0, "init": "identity"},
    "aggressive": {"mode": "mhc", "constraint": "simplex", "epsilon": 0.0, "temperature": 0.7, "init": "uniform"},
    "research": {"mode": "mhc", "constraint": "simplex", "epsilon": 0.05, "temperature": 1.0, "init": "uniform"},
}


def get_preset(name: str) -> dict:
    """A copy of the preset ``name`` (``"stable"``, ``"aggressive"``, ``"research"``; any case).

    The values are the package's. Every key is a field of `mhc_fx.compat.MHCConfig` and an argument
    of `mhc_fx.compat.MHCSkip` (``MHCSkip(**preset)``, ``MHCConfig(**preset)``). mhc_fx's own
    ``mhc_fx.MHCSkip`` has no ``init`` (it always starts at the identity): drop that key there."""
    if not isinstance(name, str) or name.lower() not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(_PRESETS)}")
    return dict(_PRESETS[name.lower()])
