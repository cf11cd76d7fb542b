"""One-time warnings for the places where the compatibility module keeps mhc_fx's behaviour
instead of the package's (each listed with its reason in docs/migrating.md)."""

from __future__ import annotations

import warnings


class CompatWarning(UserWarning):
    """Code written for the `mhc` package relies on a behaviour that mhc_fx.compat does not
    reproduce (a defect of the package, or a meaning mhc_fx gives otherwise). Each is shown
    once per process; silence them with ``warnings.filterwarnings("ignore", category=CompatWarning)``."""


_shown: set[str] = set()


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    """Warn ``message`` the first time ``key`` is seen in this process."""
    if key in _shown:
        return
    _shown.add(key)
    warnings.warn(f"mhc_fx.compat: {message} (see docs/migrating.md)", CompatWarning, stacklevel=stacklevel)


def reset() -> None:
    """Forget which warnings were shown (for tests)."""
    _shown.clear()
