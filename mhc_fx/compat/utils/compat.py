"""`mhc.utils.compat`: `compile_model` and `autocast_context`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def compile_model(model: nn.Module, **kwargs: Any) -> nn.Module:
    """``torch.compile(model, **kwargs)`` with ``backend="mhc"`` unless another backend is given
    (the package compiled with Inductor, which the ``mhc`` backend extends with its fused sites)."""
    kwargs.setdefault("backend", "mhc")
    return torch.compile(model, **kwargs)


@contextlib.contextmanager
def autocast_context(device_type: str = "cuda", dtype: torch.dtype = torch.float16) -> Iterator[None]:
    """``torch.autocast(device_type, dtype)`` when ``device_type`` is ``"cuda"`` and CUDA is
    available; otherwise nothing, as in the package (use ``torch.autocast("cpu", ...)`` directly)."""
    if device_type == "cuda" and torch.cuda.is_available():
        with torch.autocast(device_type=device_type, dtype=dtype):
            yield
    else:
        yield
