"""Inductor's CUDA (Triton) code generation on a machine with no GPU: generate the code, launch nothing.

Used by ``tests/test_triton_codegen.py``, always in a child process: everything here
patches process-wide state (a C++ device-guard registration, ``torch.cuda`` functions,
Inductor's cached device queries) that must not leak into other tests.

How it works (torch 2.13, CPU wheel, ``triton`` installed):

* **A CUDA device guard.** A CPU build registers no ``DeviceGuardImpl`` for CUDA, and
  Python bindings of tensor methods (``t[..., k]``, ``masked_fill``) open a device guard
  for their tensor, so they fail on fake ``cuda`` tensors ("PyTorch is not linked with
  support for cuda devices"). `build_guard` compiles (g++, torch's headers, about 2 s)
  a 10-line library that registers c10's own ``FakeGuardImpl<CUDA>``, the guard a CUDA
  build installs when it has no device (``torch._C._ensureCUDADeviceGuardSet`` does
  that only on CUDA builds).
* **A device that is not there.** `fake_cuda` patches ``torch.cuda`` (``is_available``,
  ``get_device_properties``: an H100's numbers, rng state, device exchange), Dynamo's
  ``CudaInterface``, Inductor's ``has_triton`` check and torch's ``triton_backend``
  (``GPUTarget("cuda", 90, 32)`` instead of asking the driver).
* **Nothing real on the device.** Three places compute small real tensors on the
  graph's device while compiling: Inductor's joint-graph pattern initialisation (done
  for the CPU instead: the patterns are device-independent graphs), its uniform-value
  constant folding (evaluated on the CPU; only the values are kept), and the proxy
  tracer's constant propagation (switched off: constants only feed ``.item()``).
  ``FakeTensorMode.avoid_device_init`` is forced on, as it is on a CPU machine.
* **Compile, don't load.** ``GraphLowering.compile_to_module`` is replaced by one that
  runs ``codegen()`` (scheduling, fusion, Triton kernel source, wrapper) and keeps the
  wrapper code; the Triton kernels are never compiled to PTX and nothing is launched.
  The compiled function raises `CodeGenerated` if it is ever called. Caches are off.
* **Inference** (`inference_code`) runs the whole stack on the fake device: parameters
  and inputs are fake ``cuda`` tensors, so Dynamo, AOTAutograd's decompositions and
  Inductor all see ``cuda``. One choice still differs from a real GPU: with no device to
  query, scaled-dot-product attention takes its math path (bmm + softmax kernels) where an
  H100 would call a flash-attention kernel; the residual adds do not depend on it.
* **Training** (`training_code`) cannot trace on the fake device: AOTAutograd traces the
  backward by running the autograd engine, which on a CPU build refuses any non-CPU
  device ("Cannot access accelerator device when none is available": the accelerator
  check in ``GraphTask::stash_current_streams`` needs the CUDA hooks of a CUDA build).
  So Dynamo and AOTAutograd (joint graph, partitioner) run on the CPU, and each
  partitioned forward/backward graph is moved to ``cuda`` before Inductor compiles it:
  device arguments rewritten, metadata re-propagated with fake ``cuda`` tensors
  (``FakeTensorProp``), then ``compile_fx_inner`` under `fake_cuda`. Device-dependent
  choices made before that point follow the CPU (e.g. attention is the CPU flash kernel,
  an extern call in the generated code).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import re
import shutil
import subprocess
import types
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

#: Numbers of an H100 SXM (what Inductor reads: SM count, capability, warp size, registers).
DEVICE_PROPERTIES = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3 (fake)",
    major=9,
    minor=0,
    multi_processor_count=132,
    total_memory=80 * 2**30,
    regs_per_multiprocessor=65536,
    max_threads_per_multi_processor=2048,
    max_threads_per_block=1024,
    warp_size=32,
    L2_cache_size=50 * 2**20,
    shared_memory_per_block=48 * 2**10,
    shared_memory_per_block_optin=227 * 2**10,
    shared_memory_per_multiprocessor=228 * 2**10,
    is_integrated=False,
    gcnArchName="NVIDIA H100 80GB HBM3",
    uuid="fake",
    pci_bus_id=0,
    pci_device_id=0,
    pci_domain_id=0,
)

GUARD_SOURCE = r"""
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

// Registers c10's fake CUDA device guard when no CUDA guard exists (a CPU-only build).
extern "C" int register_fake_cuda_guard() {
  static c10::impl::FakeGuardImpl<c10::DeviceType::CUDA> impl;
  if (c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) return 0;
  static c10::impl::DeviceGuardImplRegistrar registrar(c10::DeviceType::CUDA, &impl);
  return 1;
}
"""


class Unavailable(RuntimeError):
    """The fake device cannot be set up here (no compiler, no torch headers, no triton)."""


class CodeGenerated(Exception):
    """Raised by a compiled function that was only generated, if something calls it."""


def build_guard(directory: Path) -> Path:
    """Compile the fake CUDA device guard library into ``directory``."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise Unavailable("no C++ compiler (g++) to build the fake CUDA device guard")
    root = Path(torch.__file__).parent
    if not (root / "include" / "c10" / "core" / "impl" / "FakeGuardImpl.h").exists():
        raise Unavailable("torch's C++ headers are not installed")
    directory.mkdir(parents=True, exist_ok=True)
    source, library = directory / "fake_cuda_guard.cpp", directory / "fake_cuda_guard.so"
    source.write_text(GUARD_SOURCE)
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [
        compiler, "-O1", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{root / 'include'}", str(source), f"-L{root / 'lib'}", "-lc10",
        f"-Wl,-rpath,{root / 'lib'}", "-o", str(library),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"building the fake CUDA device guard failed:\n{done.stderr[-2000:]}")
    return library


_GUARD: list = []


def install_guard(library: Path) -> None:
    """Load the library and register the guard (once per process; a no-op on CUDA builds)."""
    if not _GUARD:
        lib = ctypes.CDLL(str(library))
        lib.register_fake_cuda_guard()
        _GUARD.append(lib)


def _cpu_device(x):
    return torch.device("cpu") if isinstance(x, torch.device) and x.type == "cuda" else x


class _CudaAsCpu(torch.utils._python_dispatch.TorchDispatchMode):
    """Run ops asked for on ``cuda`` on the CPU (constant folding only reads their values)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tree_map = torch.utils._pytree.tree_map
        return func(*tree_map(_cpu_device, args), **tree_map(_cpu_device, kwargs or {}))


def _on_cpu(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with _CudaAsCpu():
            return fn(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def fake_cuda():
    """Make Inductor believe that ``cuda:0`` is an H100, for code generation only."""
    if not _GUARD:
        raise Unavailable("install_guard() first")
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
    except ImportError as err:  # pragma: no cover - the test skips first
        raise Unavailable(f"triton is not importable: {err}") from err
    import torch._inductor.scheduler as scheduler
    import torch.fx.experimental.proxy_tensor as proxy_tensor
    import torch.utils._triton as torch_triton
    from torch._dynamo.device_interface import CudaInterface
    from torch._inductor.fx_passes import joint_graph
    from torch._subclasses.fake_tensor import FakeTensorMode

    props = DEVICE_PROPERTIES
    patterns_init = joint_graph.lazy_init
    folder = joint_graph.UniformValueConstantFolder
    with contextlib.ExitStack() as stack:

        def patch(owner, name, value):
            stack.enter_context(mock.patch.object(owner, name, value))

        for name, value in {
            "is_available": lambda: True,
            "is_initialized": lambda: True,
            "device_count": lambda: 1,
            "current_device": lambda: 0,
            "get_device_properties": lambda device=None: props,
            "get_device_capability": lambda device=None: (props.major, props.minor),
            "get_rng_state": lambda device="cuda": torch.zeros(16, dtype=torch.uint8),
            "set_rng_state": lambda new_state, device="cuda": None,
            "_exchange_device": lambda device: 0,
            "_maybe_exchange_device": lambda device: 0,
        }.items():
            patch(torch.cuda, name, value)
        for name, value in {
            "get_device_properties": lambda device=None: props,
            "current_device": lambda: 0,
            "device_count": lambda: 1,
            "exchange_device": lambda device: 0,
            "maybe_exchange_device": lambda device: 0,
        }.items():
            patch(CudaInterface, name, staticmethod(value))
        patch(scheduler, "has_triton", lambda: True)
        patch(torch_triton, "triton_backend", lambda: make_backend(GPUTarget("cuda", 90, 32)))
        # Device-independent pattern graphs, traced with CPU example tensors.
        patch(joint_graph, "lazy_init", lambda input_device=None: patterns_init(torch.device("cpu")))
        patch(folder, "__init__", _on_cpu(folder.__init__))
        patch(folder, "run", _on_cpu(folder.run))
        patch(proxy_tensor, "CONSTANT_NUMEL_LIMIT", 0)
        patch(FakeTensorMode, "avoid_device_init", property(lambda self: True))
        yield


@contextlib.contextmanager
def generate_only(sink: list[str]):
    """Inductor generates each graph's code into ``sink`` (the wrapper, kernels inlined) and
    compiles and loads nothing; FX-graph and AOTAutograd caches are off."""
    from torch._inductor.graph import GraphLowering

    class _NotLoaded:
        def call(self, *args, **kwargs):
            raise CodeGenerated

    def compile_to_module(self):
        wrapper, _ = self.codegen_with_cpp_wrapper() if self.cpp_wrapper else self.codegen()
        sink.append(wrapper.value)
        return _NotLoaded()

    with (
        mock.patch.object(GraphLowering, "compile_to_module", compile_to_module),
        mock.patch.object(GraphLowering, "save_output_code", lambda code: None),
        torch._inductor.config.patch(force_disable_caches=True),
        torch._functorch.config.patch(force_non_lazy_backward_lowering=True),
    ):
        yield


def _not_run(*args):
    raise CodeGenerated


def _fake_cuda_like(t, mode):
    if not isinstance(t, torch.Tensor):
        return t
    with mode:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")


def fake_cuda_model(model: torch.nn.Module, mode, requires_grad: bool = False) -> torch.nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake ``cuda`` tensors of ``mode``."""
    model = copy.deepcopy(model)
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(_fake_cuda_like(p, mode), requires_grad=requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = _fake_cuda_like(b, mode)
    return model


def inference_code(model: torch.nn.Module, example: torch.Tensor, compiler: Callable) -> list[str]:
    """Inductor's CUDA wrapper code (with the Triton kernels) for ``model(example)`` under no_grad.

    ``compiler`` is a Dynamo backend built on ``compile_fx`` (``compile_fx`` itself, or ``mhc_backend``).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake_model = fake_cuda_model(model, mode)
    fake_input = _fake_cuda_like(example, mode)
    codes: list[str] = []

    def backend(gm, example_inputs):
        with fake_cuda(), generate_only(codes):
            compiler(gm, example_inputs)
        return _not_run

    torch._dynamo.reset()
    with torch.no_grad(), contextlib.suppress(CodeGenerated):
        torch.compile(fake_model, backend=backend, dynamic=False)(fake_input)
    return codes


def _retarget_to_cuda(sink: list[str]) -> Callable:
    """An ``inner_compile`` for ``compile_fx``: move the partitioned graph to fake ``cuda:0``,
    then ``compile_fx_inner`` it under `fake_cuda` (code generated into ``sink``)."""
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.node import map_aggregate
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    def to_cuda(x):
        return torch.device("cuda", 0) if isinstance(x, torch.device) and x.type == "cpu" else x

    def inner(gm, example_inputs, **kwargs):
        gm = copy.deepcopy(gm)
        for node in gm.graph.nodes:
            node.args = map_aggregate(node.args, to_cuda)
            node.kwargs = map_aggregate(node.kwargs, to_cuda)
        gm.recompile()
        mode = FakeTensorMode()
        inputs = [_fake_cuda_like(t, mode) for t in example_inputs]
        with fake_cuda(), torch._guards.tracing(torch._guards.TracingContext(mode)):
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*inputs)  # keeps the other node meta
            with generate_only(sink):
                return compile_fx_inner(gm, inputs, **kwargs)

    return inner


def training_code(model: torch.nn.Module, example: torch.Tensor, compiler: Callable) -> list[str]:
    """``[forward, backward]``: Inductor's CUDA code for a training step of ``model(example)``.

    ``compiler`` is ``compile_fx`` or a backend function that calls it through a global
    named ``compile_fx`` (``mhc_backend``), so the backend's own code runs; the call gets
    ``inner_compile=`` `_retarget_to_cuda`. The model and input stay real CPU tensors.
    """
    from torch._inductor.compile_fx import compile_fx

    codes: list[str] = []
    retargeting = functools.partial(compile_fx, inner_compile=_retarget_to_cuda(codes))
    target = compiler.func if isinstance(compiler, functools.partial) else compiler  # options bound by partial
    namespace = getattr(target, "__globals__", {})
    if compiler is not compile_fx and namespace.get("compile_fx") is not compile_fx:
        raise Unavailable(f"{compiler!r} does not call compile_fx through a global of that name")

    def backend(gm, example_inputs):
        with generate_only([]):  # the CPU side generates nothing, but keep its caches off too
            if compiler is compile_fx:
                retargeting(gm, example_inputs)
            else:
                with mock.patch.dict(namespace, {"compile_fx": retargeting}):
                    compiler(gm, example_inputs)
        return _not_run

    torch._dynamo.reset()
    with contextlib.suppress(CodeGenerated):
        torch.compile(model, backend=backend, dynamic=False)(example)
    return codes


_LAUNCH = re.compile(r"^\s+(triton_\w+)\.run\(", re.M)


def kernel_launches(code: str) -> list[str]:
    """Names of the Triton kernels the generated wrapper launches, in order (repeats included)."""
    return _LAUNCH.findall(code)


def code_lines(code: str) -> str:
    """The generated code without comment lines (which list the fused source ops by name)."""
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith("#"))
