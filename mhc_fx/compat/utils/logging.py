"""`mhc.utils.logging`: the package's logger accessor."""

from __future__ import annotations

import logging


def get_logger(name: str = "mhc") -> logging.Logger:
    """``logging.getLogger(name)``. The compatibility module itself logs under ``mhc_fx.compat``."""
    return logging.getLogger(name)
