"""The backend layer: ``torch.compile(model, backend="mhc")``.

Registered when mhc_fx is imported and through the ``torch_dynamo_backends``
entry point (``mhc = "mhc_fx.backend:mhc_backend"``), so ``backend="mhc"``
resolves in any process where the package is installed.
"""

from __future__ import annotations


def mhc_backend(gm, example_inputs, **kwargs):
    """``torch.compile(model, backend="mhc")``; see `mhc_fx.backend.compiler.mhc_backend`.
    Inductor is imported on the first compile, not on ``import mhc_fx``."""
    from .compiler import mhc_backend as compile_with_inductor

    return compile_with_inductor(gm, example_inputs, **kwargs)


def config_patches(*args, **kwargs):
    """The Inductor config the backend compiles under (see `compiler.config_patches`)."""
    from .compiler import config_patches as patches

    return patches(*args, **kwargs)


def decompositions():
    """Inductor's decomposition table with ``mix`` decomposed (see `compiler.decompositions`)."""
    from .compiler import decompositions as table

    return table()


BACKEND_NAME = "mhc"


def register() -> None:
    """Register ``"mhc"`` with Dynamo, unless it is registered or an entry point will do it."""
    from torch._dynamo.backends import registry

    if BACKEND_NAME in registry._COMPILER_FNS:
        return
    if registry._BACKENDS.get(BACKEND_NAME) is not None:
        return  # a discovered entry point registers it on first lookup
    registry.register_backend(compiler_fn=mhc_backend, name=BACKEND_NAME)


__all__ = ["BACKEND_NAME", "config_patches", "decompositions", "mhc_backend", "register"]
