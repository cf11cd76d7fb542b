"""The `mhc` package's public API (PyTorch part), under its names, on mhc_fx's math.

Code written against ``mhc`` 0.5.x moves by changing its imports to ``mhc_fx.compat``. This
is being built in steps; provided so far: the constraints (`project_simplex`,
`project_identity_preserving`, `project_doubly_stochastic`), `MatrixMHCSkip`, `HistoryBuffer`, the presets
(`get_preset`), `ForwardProfiler`, and the utilities `set_seed`, `ensure_list`, `get_last_k`,
`compile_model`, `autocast_context`. The layers
`MHCSkip` and `MHCSequential` are mhc_fx's own (``from mhc_fx import MHCSkip``). Every name,
and each difference from the package with its reason, is listed in docs/migrating.md. The
TensorFlow layers of the package are out of scope.
"""

from .constraints import project_doubly_stochastic, project_identity_preserving, project_simplex
from .history import HistoryBuffer
from .layers import MatrixMHCSkip
from .presets import get_preset
from .profiling import ForwardProfiler, autocast_context, compile_model
from .utils import ensure_list, get_last_k, set_seed

__all__ = [
    "ForwardProfiler",
    "HistoryBuffer",
    "MatrixMHCSkip",
    "autocast_context",
    "compile_model",
    "ensure_list",
    "get_last_k",
    "get_preset",
    "project_doubly_stochastic",
    "project_identity_preserving",
    "project_simplex",
    "set_seed",
]
