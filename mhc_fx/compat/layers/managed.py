"""`mhc.layers.managed`: `MHCSequential` with the package's positional signature and options, on
mhc_fx's `MHCSequential` (history inside one call, exact checkpointing gradients)."""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from ... import nn as fx_nn
from .._warn import warn_once
from ..config import resolve_default
from .history_buffer import HistoryBuffer
from .mhc_skip import MHCSkip, resolve_detach


class MHCSequential(fx_nn.MHCSequential):
    """``nn.Sequential`` with hyper-connections, with the `mhc` package's signature: positional
    ``modules, max_history, mode, constraint, epsilon, temperature, clear_history_each_forward,
    detach_history, use_gating, use_checkpointing, prune_threshold, stochastic``; options left at
    None come from the default config at construction. Each module gets a compat `MHCSkip`
    (``skip_layers[i]``, its ``init`` and ``auto_project`` from the default config, as in the
    package); the state dict has the package's keys.

    Kept from mhc_fx, where the package had defects (docs/migrating.md §3):

    - History lives inside one forward call. ``history_buffer`` is a `HistoryBuffer` that
      package code can ``clear()``, ``len()`` and ``get()``; it is empty between calls (nothing
      outlives a call, so nothing leaks into the next batch or holds its activations).
      ``clear_history_each_forward=False`` therefore changes nothing (warned once).
    - ``detach_history`` (True by default, as in the package) detaches the older states only.
    - ``use_checkpointing`` gives the gradients of the unchecked run."""

    def __init__(
        self,
        modules: Iterable[nn.Module],
        max_history: int | None = None,
        mode: str | None = None,
        constraint: str | None = None,
        epsilon: float | None = None,
        temperature: float | None = None,
        clear_history_each_forward: bool | None = None,
        detach_history: bool | None = None,
        use_gating: bool = False,
        use_checkpointing: bool = False,
        prune_threshold: float = 0.0,
        stochastic: bool = False,
    ) -> None:
        detach_history = resolve_detach(detach_history)
        clear = resolve_default(clear_history_each_forward, "clear_history_each_forward")
        if not isinstance(clear, bool):
            raise TypeError(f"clear_history_each_forward must be a bool, got {clear!r}")
        if not clear:
            warn_once(
                "clear_history_each_forward",
                "clear_history_each_forward=False does not carry history into the next call: "
                "history lives inside one forward call (the package let it leak across batches)",
            )
        options = dict(
            max_history=resolve_default(max_history, "max_history"),
            mode=resolve_default(mode, "mode"),
            constraint=resolve_default(constraint, "constraint"),
            epsilon=resolve_default(epsilon, "epsilon"),
            temperature=resolve_default(temperature, "temperature"),
            stochastic=stochastic,
            detach_history=detach_history,
        )
        super().__init__(modules, use_checkpointing=use_checkpointing, **options)
        self.skip_layers = nn.ModuleList(
            MHCSkip(**options, use_gating=use_gating, prune_threshold=prune_threshold) for _ in self.wrapped_modules
        )
        self.clear_history_each_forward = clear
        self.history_buffer = HistoryBuffer(options["max_history"], detach_history=detach_history)

    def clear_history(self) -> None:
        """Empty ``history_buffer`` (already empty between calls: history lives in one call)."""
        self.history_buffer.clear()

    def forward(self, x: Tensor) -> Tensor:
        """The stack's output; every call starts from ``[x]`` alone, whatever ran before."""
        self.history_buffer.clear()
        return super().forward(x)
