"""`mhc.utils.profiling`: `ForwardProfiler`, forward wall time per module from hooks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn


class ForwardProfiler:
    """Wall time of each module's forward, from module hooks: `start` adds the hooks (to every
    module for which ``filter_fn(name, module)`` is true, all of them by default), `stop` removes
    them, `summary` gives ``{module name: mean ms}``; ``times_ms`` keeps every call. With
    ``use_cuda_sync`` each hook synchronises CUDA first, so GPU time is counted where it is spent.
    Also a context manager (``with ForwardProfiler(model) as prof: model(x)``)."""

    def __init__(
        self,
        module: nn.Module,
        filter_fn: Callable[[str, nn.Module], bool] | None = None,
        use_cuda_sync: bool = False,
    ) -> None:
        self.module = module
        self.filter_fn = filter_fn
        self.use_cuda_sync = use_cuda_sync
        self.times_ms: dict[str, list[float]] = {}
        self._handles: list = []
        self._starts: dict[str, list[float]] = {}  # a stack per module: a module may call itself

    def _now(self) -> float:
        if self.use_cuda_sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """Add the hooks (again after `stop`; a second `start` without `stop` changes nothing)."""
        if self._handles:
            return
        for name, module in self.module.named_modules():
            if self.filter_fn is not None and not self.filter_fn(name, module):
                continue
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str):
        def hook(module, args):
            self._starts.setdefault(name, []).append(self._now())

        return hook

    def _leave(self, name: str):
        def hook(module, args, output):
            starts = self._starts.get(name)
            if starts:
                self.times_ms.setdefault(name, []).append((self._now() - starts.pop()) * 1000.0)

        return hook

    def stop(self) -> None:
        """Remove the hooks; the times recorded so far stay."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._starts.clear()

    def summary(self) -> dict[str, float]:
        """``{module name: mean forward time in ms}`` over the calls recorded so far."""
        return {name: sum(times) / len(times) for name, times in self.times_ms.items() if times}

    def __enter__(self) -> ForwardProfiler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
