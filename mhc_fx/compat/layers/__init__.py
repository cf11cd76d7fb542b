"""`mhc.layers`: the package's layers, on mhc_fx's `MHCSkip`, `MHCSequential` and `mix` op."""

from .conv_mhc import MHCBasicBlock, MHCBottleneck, MHCConv2d
from .history_buffer import HistoryBuffer
from .managed import MHCSequential
from .matrix_skip import MatrixMHCSkip
from .mhc_skip import MHCSkip

__all__ = [
    "HistoryBuffer",
    "MHCBasicBlock",
    "MHCBottleneck",
    "MHCConv2d",
    "MHCSequential",
    "MHCSkip",
    "MatrixMHCSkip",
]
