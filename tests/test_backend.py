"""torch.compile(backend="mhc"): fusion, graph breaks, recompiles, numerics, caches (issue 5)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import fresh_cache, run_and_get_code

import mhc_fx
from mhc_fx.backend import config_patches
from tests.helpers import perturb_mixing
from tests.models.gpt import GPT

LAYERS = 4
MIXING_SITES = 2 * LAYERS - 1  # the first site of the chain has a window of 1: a plain add


def perturb(model, scale=0.3, seed=0):
    return perturb_mixing(model, scale, seed)


def kernel_calls(code: str) -> list[str]:
    """Names of the C++ kernels launched by the generated ``call`` function, in order."""
    body = code[code.index("def call(") :]
    return re.findall(r"^\s+(cpp_fused_\w+)\(", body, re.M)


@pytest.fixture(scope="module")
def gpt_pair():
    torch.manual_seed(0)
    original = GPT(layers=LAYERS, dim=32)
    converted = mhc_fx.convert(original)
    perturb(converted)
    return original, converted


def tokens(batch=2, length=16, seed=0):
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


def _compile_code(model, backend, fn):
    torch._dynamo.reset()
    with torch._inductor.config.patch(kernel_name_max_ops=1000):
        compiled = torch.compile(model, backend=backend)
        return run_and_get_code(lambda: fn(compiled))


def test_inference_forward_has_one_fused_kernel_per_site(gpt_pair):
    original, converted = gpt_pair
    x = tokens()
    with torch.no_grad():
        _, (base,) = _compile_code(original, "inductor", lambda f: f(x))
        out, (code,) = _compile_code(converted, "mhc", lambda f: f(x))
    calls = kernel_calls(code)
    assert "mhc_fx.mix" not in code, "mix must be fused, not an extern call"
    assert sum("mix" in name for name in calls) == MIXING_SITES
    assert all(name.count("mix") == 1 for name in calls if "mix" in name)
    # projection + mixing + branch add cost no kernel beyond the residual model's own
    assert len(calls) <= len(kernel_calls(base))
    torch.testing.assert_close(out, converted(x), rtol=1e-5, atol=1e-5)


def test_training_step_kernels_fused(gpt_pair):
    original, converted = gpt_pair
    x = tokens()
    _, base = _compile_code(original, "inductor", lambda f: f(x).square().mean().backward())
    _, codes = _compile_code(converted, "mhc", lambda f: f(x).square().mean().backward())
    forward, backward = codes
    assert "mhc_fx.mix" not in forward and "mhc_fx.mix" not in backward
    assert sum("mix" in name for name in kernel_calls(forward)) == MIXING_SITES
    # the backward of each site (branch, history and weight gradients) in at most two fused kernels
    assert len(kernel_calls(backward)) <= len(kernel_calls(base[1])) + 2 * MIXING_SITES


def test_default_inductor_keeps_mix_opaque_and_correct(gpt_pair):
    _, converted = gpt_pair
    x = tokens()
    with torch.no_grad():
        out, (code,) = _compile_code(converted, "inductor", lambda f: f(x))
    assert "torch.ops.mhc_fx.mix.default" in code
    torch.testing.assert_close(out, converted(x), rtol=1e-5, atol=1e-5)


def test_fullgraph_and_no_graph_break(gpt_pair):
    original, converted = gpt_pair
    x = tokens()
    torch._dynamo.reset()
    assert torch._dynamo.explain(original)(x).graph_break_count == 0
    explanation = torch._dynamo.explain(converted)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="mhc", fullgraph=True)
    torch.testing.assert_close(compiled(x), converted(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["dynamic", "mark_dynamic"])
def test_no_recompiles_across_batch_and_length(gpt_pair, how):
    _, converted = gpt_pair
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="mhc", dynamic=True if how == "dynamic" else None)
    first = tokens(2, 16)
    if how == "mark_dynamic":
        torch._dynamo.mark_dynamic(first, 0)
        torch._dynamo.mark_dynamic(first, 1)
    compiled(first)
    with torch.compiler.set_stance("fail_on_recompile"):
        for batch, length in [(3, 9), (5, 20), (2, 33)]:  # sizes 0 and 1 are specialised by Dynamo itself
            x = tokens(batch, length, seed=batch)
            torch.testing.assert_close(compiled(x), converted(x), rtol=1e-5, atol=1e-5)


def _grads(model, x, run=None):
    """Output and gradients of ``model``'s parameters, the forward run by ``run`` (e.g. its compiled form)."""
    model.zero_grad(set_to_none=True)
    out = (model if run is None else run)(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


MODES = {
    "residual": dict(mode="residual"),
    "hc": dict(mode="hc"),
    "mhc": dict(mode="mhc"),
    "mhc-identity": dict(mode="mhc", constraint="identity", epsilon=0.1),
    "mhc-stochastic": dict(mode="mhc", stochastic=True),
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_forward_backward_match_eager_at_init(name):
    torch.manual_seed(0)
    model = mhc_fx.convert(GPT(layers=2, dim=16), **MODES[name]).eval()
    x = tokens(2, 8)
    eager_out, eager_grads = _grads(model, x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="mhc")
    out, grads = _grads(model, x, run=compiled)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys()
    for key in grads:
        torch.testing.assert_close(grads[key], eager_grads[key], rtol=1e-5, atol=1e-6, msg=key)
    mixing = [k for k in grads if k.startswith("mhc.")]
    if name != "residual":
        # the tie-aware projection gradient survives the lowering: the init is not frozen
        assert mixing and all(grads[k].abs().sum() > 0 for k in mixing)


@pytest.mark.parametrize("name", sorted(MODES))
def test_twenty_training_steps_match_eager(name):
    torch.manual_seed(0)
    base = GPT(layers=2, dim=16)
    eager = mhc_fx.convert(base, **MODES[name]).train()
    perturb(eager, scale=0.5)  # start away from the identity so that mixing matters from step one
    compiled_model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend="mhc")
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)  # Adam would amplify rounding on ~0 gradients
    opt_c = torch.optim.SGD(compiled_model.parameters(), lr=0.1)
    for step in range(20):
        x = tokens(4, 12, seed=step)
        target = tokens(4, 12, seed=100 + step)
        for model, opt in ((eager, opt_e), (compiled, opt_c)):
            torch.manual_seed(step)  # the same Gumbel draws in both runs (stochastic mode)
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (n, a), (_, b) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=n)
    if name != "residual":
        moved = mhc_fx.mixing_weights(eager)
        assert any(not torch.equal(a, torch.eye(len(a))[-1]) for a in moved.values())


@pytest.mark.parametrize("row_sums", [False, True], ids=["cpu_form", "gpu_form"])
@pytest.mark.parametrize("name", ["resnet_cnn", "convnext", "gpt"])
def test_zoo_models_train_compiled_like_eager(monkeypatch, name, row_sums):
    # 4-D states (N, C, H, W), BatchNorm and channels-last branches: the site function's row
    # sums and transposed Jacobian are taken over other shapes than a transformer's. The GPU
    # form of the weight gradient (row sums, J^T per row) compiled and run here on the CPU.
    from mhc_fx import ops
    from tests.models.zoo import BY_NAME

    monkeypatch.setattr(ops, "row_sums_first", lambda device: row_sums)

    entry = BY_NAME[name]
    (x,) = entry.example_inputs()
    model = perturb(mhc_fx.convert(entry.make(), example_inputs=(x,)), scale=0.5).eval()
    eager_out, eager_grads = _grads(model, x)
    torch._dynamo.reset()
    out, grads = _grads(model, x, run=torch.compile(model, backend="mhc"))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    mixing = [k for k in grads if k.startswith("mhc.")]
    assert mixing and grads.keys() == eager_grads.keys()
    for key in grads:
        scale = eager_grads[key].abs().max().item()
        torch.testing.assert_close(grads[key], eager_grads[key], rtol=1e-4, atol=1e-5 * scale, msg=key)


def test_differently_converted_models_share_no_stale_cache():
    torch.manual_seed(0)
    base = GPT(layers=2, dim=16)
    a = mhc_fx.convert(base, mode="mhc", max_history=2)
    b = mhc_fx.convert(base, mode="hc", max_history=4)
    perturb(a, seed=1)
    perturb(b, seed=2)
    x = tokens(2, 8)
    expected = {"a": a(x), "b": b(x)}
    assert not torch.allclose(expected["a"], expected["b"])
    with fresh_cache():
        counters.clear()
        for _ in range(2):  # cold, then warm (Dynamo reset, Inductor caches kept)
            for key, model in (("a", a), ("b", b)):
                torch._dynamo.reset()
                out = torch.compile(model, backend="mhc")(x)
                torch.testing.assert_close(out, expected[key], rtol=1e-5, atol=1e-6)
        assert counters["inductor"]["fxgraph_cache_bypass"] == 0
        assert counters["inductor"]["fxgraph_cache_hit"] >= 2


def test_cache_key_pass_is_stable_and_installed():
    patches = config_patches()
    key = patches["post_grad_custom_post_pass"]
    assert key.uuid() == config_patches()["post_grad_custom_post_pass"].uuid() and key.uuid()
    assert patches["unroll_reductions_threshold"] > 16


def test_backend_options_validated():
    with pytest.raises(ValueError, match="unroll_window"):
        config_patches(options={"unroll_window": 0})
    with pytest.raises(ValueError, match="not_an_option"):
        config_patches(options={"not_an_option": 1})
    assert config_patches(options={"unroll_window": 32})["unroll_reductions_threshold"] >= 33
    assert config_patches(mode="max-autotune")["max_autotune"] is True


def test_inline_projection_is_on_for_gpu_graphs_by_default():
    def inlined(patches):
        return patches.get("realize_opcount_threshold") == 1000 and patches.get("realize_reads_threshold") == 1000

    assert not inlined(config_patches())  # CPU: Inductor's CPU limits already inline the projection
    assert inlined(config_patches(device_type="cuda"))
    assert inlined(config_patches(options={"inline_projection": True}))
    assert not inlined(config_patches(options={"inline_projection": False}, device_type="cuda"))
    assert inlined(config_patches(options={"inline_projection": "auto"}, device_type="xpu"))
    with pytest.raises(ValueError, match=r"options\['inline_projection'\] must be True, False or 'auto', got 1"):
        config_patches(options={"inline_projection": 1})


def test_mode_and_options_reach_the_backend(gpt_pair):
    _, converted = gpt_pair
    x = tokens()
    torch._dynamo.reset()
    compiled = torch.compile(converted, backend="mhc", options={"unroll_window": 8})
    torch.testing.assert_close(compiled(x), converted(x), rtol=1e-5, atol=1e-5)


def test_backend_resolves_through_the_entry_point_without_import():
    code = (
        "import sys, torch\n"
        "out = torch.compile(lambda x: x * 2 + 1, backend='mhc')(torch.ones(3))\n"
        "assert torch.equal(out, torch.full((3,), 3.0))\n"
        "assert 'mhc_fx' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
