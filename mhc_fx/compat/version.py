"""`mhc.version`: the version of the installed mhc_fx (the compatibility module has none of its own)."""

from .. import __version__

__all__ = ["__version__"]
