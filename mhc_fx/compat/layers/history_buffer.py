"""`mhc.layers.history_buffer`: `HistoryBuffer`, the package's list of the last ``max_history`` states."""

from __future__ import annotations

import torch


class HistoryBuffer:
    """The last ``max_history`` states, oldest first; with ``detach_history`` each state is stored
    detached. A plain Python object (not a module, nothing in a ``state_dict``), as in the package;
    mhc_fx's own layers keep history inside one forward call instead (docs/migrating.md)."""

    def __init__(self, max_history: int = 4, detach_history: bool = False) -> None:
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
            raise ValueError(f"max_history must be an int >= 1, got {max_history!r}")
        self.max_history = max_history
        self.detach_history = bool(detach_history)
        self.buffer: list[torch.Tensor] = []

    def append(self, x: torch.Tensor) -> None:
        """Add the newest state; the oldest is dropped beyond ``max_history``."""
        self.buffer.append(x.detach() if self.detach_history else x)
        del self.buffer[: max(0, len(self.buffer) - self.max_history)]

    def get(self) -> list[torch.Tensor]:
        """A copy of the stored states, oldest first."""
        return list(self.buffer)

    def clear(self) -> None:
        """Remove every stored state."""
        self.buffer = []

    def __len__(self) -> int:
        """The number of stored states."""
        return len(self.buffer)

    def __repr__(self) -> str:
        return f"HistoryBuffer(max_history={self.max_history}, detach_history={self.detach_history}, len={len(self)})"
