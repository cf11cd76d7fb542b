"""`mhc.config`: the package's mutable default configuration, and its ``[tool.mhc]`` TOML table.

The compatibility layers read every option left at ``None`` from the current default config
when they are built, as the package's do (`resolve_default`). `MHCConfig` here is the package's
class, not `mhc_fx.MHCConfig`: `MHCConfig.to_mhc_fx` converts it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import config as fx_config

INITS = ("identity", "uniform")
#: The fields this config shares with `mhc_fx.MHCConfig`.
SHARED_FIELDS = ("mode", "max_history", "constraint", "epsilon", "temperature", "detach_history", "auto_project")
HISTORY_SCOPES = ("module", "global")


@dataclasses.dataclass
class MHCConfig:
    """The `mhc` package's options, with its defaults (mutable, like the package's).

    Checked on construction (a bad value raises naming the field and what it accepts) and by
    `validate`. Fields shared with `mhc_fx.MHCConfig` mean what they mean there, with two
    differences of default: ``epsilon`` is 0.1 (mhc_fx: 0.05) and ``detach_history`` is True
    (mhc_fx: False; in mhc_fx it detaches the older states only, never the latest stream).
    ``init`` (``"identity"`` or ``"uniform"``), ``clear_history_each_forward`` and
    ``history_scope`` (``"module"`` or ``"global"``, for `inject_mhc`) are the package's own."""

    max_history: int = 4
    mode: str = "mhc"
    constraint: str = "simplex"
    epsilon: float = 0.1
    temperature: float = 1.0
    init: str = "identity"
    detach_history: bool = True
    clear_history_each_forward: bool = True
    auto_project: bool = False
    history_scope: str = "module"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first bad field (the fields are mutable)."""
        self.to_mhc_fx()  # checks the fields shared with mhc_fx, with mhc_fx's messages
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.history_scope not in HISTORY_SCOPES:
            raise ValueError(f"history_scope must be one of {HISTORY_SCOPES}, got {self.history_scope!r}")
        if not isinstance(self.clear_history_each_forward, bool):
            raise TypeError(f"clear_history_each_forward must be a bool, got {self.clear_history_each_forward!r}")

    def to_mhc_fx(self) -> fx_config.MHCConfig:
        """The `mhc_fx.MHCConfig` with the shared fields (mode, max_history, constraint, epsilon,
        temperature, detach_history, auto_project). ``init``, ``clear_history_each_forward`` and
        ``history_scope`` have no counterpart: mhc_fx starts at the identity and keeps history
        inside one call."""
        return fx_config.MHCConfig(**{name: getattr(self, name) for name in SHARED_FIELDS})

    @classmethod
    def from_mhc_fx(cls, config: fx_config.MHCConfig) -> MHCConfig:
        """The package-style config with the shared fields of ``config``, the rest at defaults."""
        if not isinstance(config, fx_config.MHCConfig):
            raise TypeError(f"config must be an mhc_fx.MHCConfig, got {type(config).__name__}")
        return cls(**{name: getattr(config, name) for name in SHARED_FIELDS})


_current = MHCConfig()


def get_default_config() -> MHCConfig:
    """The current default config (the object itself: changing its fields changes the defaults)."""
    return _current


def set_default_config(config: MHCConfig | None = None, /, **fields: Any) -> None:
    """Make ``config`` the default for layers built from now on. Fields given as keywords
    (``set_default_config(max_history=6)``, as the package's docs write it) apply on top of
    ``config``, or of the current default when no config is given. Layers already built keep
    their options."""
    global _current
    if config is not None and not isinstance(config, MHCConfig):
        raise TypeError(f"config must be an mhc_fx.compat.MHCConfig, got {type(config).__name__}")
    base = config if config is not None else _current
    if fields:
        _check_keys(fields, "set_default_config")
        base = dataclasses.replace(base, **fields)
    else:
        base.validate()
    _current = base


def resolve_default(value: Any, field: str) -> Any:
    """``value``, or the default config's ``field`` when ``value`` is None."""
    if value is not None:
        return value
    return getattr(get_default_config(), field)


def _check_keys(data: dict, where: str) -> None:
    known = [f.name for f in dataclasses.fields(MHCConfig)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown config keys {unknown}; allowed: {known}")


def _load_toml(path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise ImportError("reading TOML on Python < 3.11 needs tomli: pip install tomli") from exc
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def load_config_from_toml(path) -> MHCConfig:
    """An `MHCConfig` from the ``[tool.mhc]`` table of the TOML file ``path`` (missing keys take
    the defaults; an unknown key is a ``ValueError`` listing the allowed ones). It does not
    change the default config: pass it to `set_default_config`."""
    table = _load_toml(path).get("tool", {}).get("mhc", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [tool.mhc] must be a table, got {type(table).__name__}")
    _check_keys(table, f"{path} [tool.mhc]")
    return MHCConfig(**table)


def load_config_from_toml_optional(path) -> MHCConfig | None:
    """`load_config_from_toml`, or None when the file does not exist."""
    try:
        return load_config_from_toml(path)
    except FileNotFoundError:
        return None
