"""The peer packages: whether each is importable, and its version.

CI installs only ``.[test]``; the peers come with the ``bench`` extra. A peer
that does not import is recorded as ``"not installed"`` and its rows are skipped.
"""

from __future__ import annotations

import importlib
import importlib.metadata

#: import name -> distribution name
PEERS = {"mhc": "mhc", "hyper_connections": "hyper-connections"}

NOT_INSTALLED = "not installed"


def load(name: str):
    """The imported peer module, or None when it (or one of its dependencies) is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def versions() -> dict[str, str]:
    """Distribution name -> installed version, or ``"not installed"``."""
    out = {}
    for module, dist in PEERS.items():
        if load(module) is None:
            out[dist] = NOT_INSTALLED
            continue
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "unknown version"
    return out
