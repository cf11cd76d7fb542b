"""`mhc.utils.tensor_ops`: small list helpers for history windows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def ensure_list(x: torch.Tensor | Iterable) -> list:
    """``[x]`` for a tensor, ``x`` itself for a list, else ``list(x)``."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, list):
        return x
    return list(x)


def get_last_k(history: Sequence, k: int) -> list:
    """The last ``k`` entries of ``history`` as a list (``[]`` for an empty one, and for ``k <= 0``,
    where the package's ``history[-0:]`` returned everything)."""
    if not history or k <= 0:
        return []
    return list(history[-k:])
