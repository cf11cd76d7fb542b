"""`mhc.utils.decorators`: `mhc_compatible`, the package's marker for custom modules."""

from __future__ import annotations

from torch import nn


def mhc_compatible(cls: type) -> type:
    """Mark the ``nn.Module`` class ``cls`` (and its instances) with ``_mhc_compatible = True`` and
    return it. `inject_mhc` leaves marked modules alone, as the package's docs say. mhc_fx's own
    tools need no marker: `mhc_fx.convert` finds the residual adds in the graph."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"mhc_compatible decorates an nn.Module subclass, got {cls!r}")
    cls._mhc_compatible = True
    return cls
