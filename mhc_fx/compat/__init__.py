"""The `mhc` package's public API (PyTorch part), under its names and module paths, on mhc_fx's math.

Code written against ``mhc`` 0.5.x moves by changing ``mhc`` to ``mhc_fx.compat`` in its
imports: ``from mhc import MHCSequential`` becomes ``from mhc_fx.compat import MHCSequential``,
``from mhc.layers.conv_mhc import MHCBasicBlock`` becomes
``from mhc_fx.compat.layers.conv_mhc import MHCBasicBlock``, and so on for ``config``,
``presets``, ``constraints``, ``layers``, ``utils`` and ``version`` with their submodules.

Everything has the package's signatures and defaults, including its mutable default config
(`get_default_config`, `set_default_config`, ``[tool.mhc]`` in TOML). The layers are mhc_fx's
layers and `mix` op: the same projections, exact identity at init, history that lives inside
one call. Where the package had a defect (history leaking across calls, ``detach_history``
cutting every gradient, host syncs, wrong checkpointing gradients) mhc_fx's behaviour is kept,
and code that relies on the package's is warned once (`CompatWarning`). docs/migrating.md lists
every name and each difference with its reason. The TensorFlow layers (``mhc.tf``) are out of
scope.
"""

import logging as _logging

from ._warn import CompatWarning
from .config import (
    MHCConfig,
    get_default_config,
    load_config_from_toml,
    load_config_from_toml_optional,
    set_default_config,
)
from .constraints import project_doubly_stochastic, project_identity_preserving, project_simplex
from .layers import (
    HistoryBuffer,
    MatrixMHCSkip,
    MHCBasicBlock,
    MHCBottleneck,
    MHCConv2d,
    MHCSequential,
    MHCSkip,
)
from .presets import get_preset
from .utils import (
    ForwardProfiler,
    autocast_context,
    compile_model,
    ensure_list,
    get_last_k,
    inject_mhc,
    inject_mhc_default,
    mhc_compatible,
    set_seed,
)

#: The package's top-level logger, ``logging.getLogger("mhc")``.
logger = _logging.getLogger("mhc")

__all__ = [
    "CompatWarning",
    "ForwardProfiler",
    "HistoryBuffer",
    "MHCBasicBlock",
    "MHCBottleneck",
    "MHCConfig",
    "MHCConv2d",
    "MHCSequential",
    "MHCSkip",
    "MatrixMHCSkip",
    "autocast_context",
    "compile_model",
    "ensure_list",
    "get_default_config",
    "get_last_k",
    "get_preset",
    "inject_mhc",
    "inject_mhc_default",
    "load_config_from_toml",
    "load_config_from_toml_optional",
    "logger",
    "mhc_compatible",
    "project_doubly_stochastic",
    "project_identity_preserving",
    "project_simplex",
    "set_default_config",
    "set_seed",
]
