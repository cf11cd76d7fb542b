"""The transform layer: find residual sites in a model's graph and rewrite them."""

from .convert import convert, explain, inject_mhc, is_converted, mixing_weights
from .pretrained import from_pretrained
from .report import Report, SiteInfo, SkippedInfo

__all__ = [
    "Report",
    "SiteInfo",
    "SkippedInfo",
    "convert",
    "explain",
    "from_pretrained",
    "inject_mhc",
    "is_converted",
    "mixing_weights",
]
