"""The validated, frozen description of how residual sites mix their history.

`MHCConfig` is built once from the keyword arguments of `convert`, `MHCSkip` or
`MHCSequential`, checked on entry (a bad value raises naming the argument and what
is allowed), and recorded on the converted model so a checkpoint says how it was
made (`to_dict` / `from_dict` round-trip through JSON).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from . import modes, stream_modes
from .modes import HC_INIT_GAP  # noqa: F401  (re-exported: the hc init's offset)

#: The names ``mode=`` accepts, one per `modes.Mode`.
MODES = tuple(modes.MODES)
CONSTRAINTS = ("simplex", "identity")

CONFIG_VERSION = 1


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")


def _check_real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class MHCConfig:
    """How every site of a converted model (or an `MHCSkip`) mixes its history.

    Attributes:
        mode: ``"residual"`` (plain add), ``"hc"`` (softmax mixing) or ``"mhc"``
            (exact projection onto the simplex).
        max_history: H, the most states a site mixes (its window is ``min(i, H)``).
        constraint: for ``mhc``: ``"simplex"`` or ``"identity"`` (the latest state
            keeps at least ``epsilon``).
        epsilon: the floor of the ``identity`` constraint, in ``[0, 1)``.
        temperature: the logits are divided by it before the projection (all modes)
            and it scales the Gumbel noise when ``stochastic``.
        stochastic: Gumbel noise in training (``hc``: Gumbel-softmax sample; ``mhc``:
            perturb-and-project, P((theta + g) / temperature)); eval is deterministic.
        detach_history: stop gradients at every history state except the latest.
        auto_project: older states of another shape reach the new shape through a
            learned projection instead of starting a new chain.
        check_finite: raise (naming the site) when a mixing weight or a history state
            is not finite; a debugging aid: it syncs with the device at every site.
        streams: n; with n >= 2 (modes ``hc`` and ``mhc``) every chain that can carry them
            holds n parallel residual streams (DeepSeek's mHC, `stream_modes`) instead of a
            history window; 1 (the default) mixes a window of the last H states.
        sinkhorn_iters: the fixed number of Sinkhorn-Knopp iterations of ``mhc`` with streams.
    """

    mode: str = "mhc"
    max_history: int = 4
    constraint: str = "simplex"
    epsilon: float = 0.05
    temperature: float = 1.0
    stochastic: bool = False
    detach_history: bool = False
    auto_project: bool = False
    check_finite: bool = False
    streams: int = 1
    sinkhorn_iters: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.constraint, str) or self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {self.constraint!r}")
        if isinstance(self.max_history, bool) or not isinstance(self.max_history, int):
            raise TypeError(f"max_history must be an int >= 1, got {self.max_history!r}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be an int >= 1, got {self.max_history!r}")
        for name in ("streams", "sinkhorn_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        epsilon = _check_real("epsilon", self.epsilon)
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must lie in [0, 1), got {self.epsilon!r}")
        temperature = _check_real("temperature", self.temperature)
        if temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("stochastic", "detach_history", "auto_project", "check_finite"):
            _check_bool(name, getattr(self, name))
        self.site_mode.validate(self)
        if self.stream_mode is not None:
            self.stream_mode.validate(self)
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "temperature", temperature)

    @property
    def site_mode(self) -> modes.Mode:
        """The mode object: how every site mixes (its parameters, weights and site computation)."""
        return modes.MODES[self.mode]

    @property
    def stream_mode(self) -> modes.Mode | None:
        """The n-stream mode of the chains that carry streams, or None when ``streams == 1``."""
        return stream_modes.for_options(self.mode, self.streams)

    @property
    def floor(self) -> float | None:
        """The identity floor on the latest weight, or None when there is none."""
        return self.site_mode.floor(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record of this config (with a format version)."""
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MHCConfig:
        """Rebuild a config written by `to_dict`; unknown keys are an error."""
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"config version {version!r} is not supported (this mhc_fx writes {CONFIG_VERSION})")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; allowed: {sorted(fields)}")
        return cls(**data)
