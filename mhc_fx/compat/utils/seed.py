"""`mhc.utils.seed`: seed every random generator a training run uses."""

from __future__ import annotations

import logging
import os
import random

import numpy
import torch


def set_seed(seed: int = 42, verbose: bool = True) -> None:
    """Seed Python's, NumPy's and torch's generators (all CUDA devices too), set
    ``PYTHONHASHSEED`` for child processes and make cuDNN deterministic; with ``verbose``,
    log the seed at INFO on the ``mhc_fx.compat`` logger."""
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device as well
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if verbose:
        logging.getLogger("mhc_fx.compat").info("Random seed set to: %s", seed)
