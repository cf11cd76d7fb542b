"""The `mhc` package's small utilities."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Sequence

import numpy
import torch


def set_seed(seed: int = 42, verbose: bool = True) -> None:
    """Seed Python's, NumPy's and torch's generators (all CUDA devices too), set
    ``PYTHONHASHSEED`` for child processes and make cuDNN deterministic."""
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device as well
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if verbose:
        logging.getLogger("mhc_fx.compat").info("Random seed set to: %s", seed)


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
