"""Small helpers shared by the tests."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mhc_fx


def perturb_mixing(model: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every ``mhc.*`` logit, so that the sites really mix."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("mhc."):
                p.add_(torch.randn(p.shape, generator=gen).to(p.device) * scale)
    return model


class NonMetaOutputs(TorchDispatchMode):
    """Records every aten op that returns a tensor off the ``meta`` device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves(out)
        if any(isinstance(t, torch.Tensor) and t.device.type != "meta" for t in leaves):
            self.ops.append(str(func))
        return out


#: The ways of checkpointing blocks from outside a model's code that `apply_checkpointing` knows.
CHECKPOINT_FORMS = ("checkpoint_wrapper", "forward_partial", "selective", "composable")


def _save_matmuls(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    # selective AC: keep the matmuls, recompute the rest
    return CheckpointPolicy.MUST_SAVE if op == torch.ops.aten.mm.default else CheckpointPolicy.PREFER_RECOMPUTE


def apply_checkpointing(form: str, model: nn.Module, blocks: list[nn.Module]) -> nn.Module:
    """Checkpoint each of ``blocks`` (non-reentrant) the way ``form`` does it, without touching the
    model's code: torch's ``checkpoint_wrapper``, a forward replaced by ``partial(checkpoint, ...)``,
    the same with selective AC, or torch's composable ``checkpoint(module)``."""
    from torch.distributed._composable import checkpoint as composable_checkpoint
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl,
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    if form == "checkpoint_wrapper":
        wrap = functools.partial(checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=wrap, check_fn=lambda m: m in blocks)
    elif form == "forward_partial":
        for block in blocks:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    elif form == "selective":
        context = functools.partial(create_selective_checkpoint_contexts, _save_matmuls)
        for block in blocks:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False, context_fn=context)
    elif form == "composable":
        for block in blocks:
            composable_checkpoint(block)
    else:
        raise ValueError(f"form must be one of {CHECKPOINT_FORMS}, got {form!r}")
    return model


REPO = Path(__file__).resolve().parent.parent


def run_ranks(module: str, args_of_rank, tmp: Path, world: int = 2, timeout: float = 300) -> None:
    """``python -m module *args_of_rank(rank)`` in ``world`` processes at once (gloo ranks);
    asserts each exits 0 (its log's tail otherwise). Output goes to files, not pipes: a rank
    blocked on a full pipe while the test waits on another would look like a hang. A rank
    still running after ``timeout`` (its worker dumps its stack with faulthandler first) and
    all the others are stopped."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    logs = [tmp / f"rank{rank}.log" for rank in range(world)]
    procs = []
    for rank, log in enumerate(logs):
        with log.open("w") as sink:
            command = [sys.executable, "-m", module, *map(str, args_of_rank(rank))]
            procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log.read_text()[-3000:]}"


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` in the repository root; asserts it exits 0 (stderr's tail otherwise)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


EXACT_MODES = {
    "residual": {"mode": "residual"},
    "mhc_simplex": {"mode": "mhc", "constraint": "simplex"},
    "mhc_identity": {"mode": "mhc", "constraint": "identity"},
}


def assert_exact(original: nn.Module, x: torch.Tensor, example_inputs=None, rtol: float = 0.0, **options):
    """Convert ``original`` in each exact mode; outputs (eval and train) and the gradients of every original
    parameter equal the original's (bit for bit when ``rtol`` is 0). Returns the last converted model."""
    for mode in EXACT_MODES.values():
        converted = mhc_fx.convert(original, example_inputs=example_inputs, **mode, **options)
        for training in (False, True):
            original.train(training)
            converted.train(training)
            want, got = original(x), converted(x)
            _assert_equal(got, want, rtol)
        original.zero_grad()
        converted.zero_grad()
        want.square().mean().backward()
        got.square().mean().backward()
        for name, p in original.named_parameters():
            _assert_equal(converted.get_parameter(name).grad, p.grad, rtol, name)
    return converted


def _assert_equal(got, want, rtol, what="output"):
    if rtol == 0:
        assert torch.equal(got, want), f"{what}: max abs diff {(got - want).abs().max().item()}"
    else:
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item(), msg=what)


def chains(report) -> tuple[int, ...]:
    return tuple(len(c) for c in report.chains.values())


def reasons(report) -> list[str]:
    return [s.reason for s in report.skipped]


def assert_compiles_like_eager(model: nn.Module, x: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    """``model`` has no graph break, compiles with ``backend="mhc"`` (fullgraph) to ``want`` on ``x``,
    and runs another input of the same shape without recompiling (fresh Dynamo state)."""
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="mhc", fullgraph=True)
    torch.testing.assert_close(compiled(x), want, rtol=1e-5, atol=atol)
    with torch.compiler.set_stance("fail_on_recompile"):
        torch.testing.assert_close(compiled(x + 1), model(x + 1), rtol=1e-5, atol=atol)
