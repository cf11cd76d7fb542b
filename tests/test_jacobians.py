"""The closed-form transposed Jacobians (mhc_fx.jacobians) and the site function built on them
(mhc_fx.site_mix): equal to autograd through the projections, in every mode, ties included."""

from __future__ import annotations

import pytest
import torch

from mhc_fx import ops
from mhc_fx.config import MHCConfig
from mhc_fx.jacobians import transposed_jacobian
from mhc_fx.projections import gumbel_from_uniform, initial_logits, project_logits
from mhc_fx.site_mix import _ProjectedMix, site_mix

CONFIGS = {
    "mhc": MHCConfig(mode="mhc"),
    "mhc-T0.5": MHCConfig(mode="mhc", temperature=0.5),
    "mhc-identity": MHCConfig(mode="mhc", constraint="identity", epsilon=0.1),
    "mhc-identity-eps0": MHCConfig(mode="mhc", constraint="identity", epsilon=0.0),
    "hc": MHCConfig(mode="hc"),
    "hc-T2": MHCConfig(mode="hc", temperature=2.0),
    "mhc-stochastic": MHCConfig(mode="mhc", stochastic=True),
    "mhc-identity-stochastic": MHCConfig(mode="mhc", constraint="identity", epsilon=0.1, stochastic=True),
    "hc-stochastic": MHCConfig(mode="hc", stochastic=True, temperature=0.7),
}
K = 4


def _thetas(config: MHCConfig) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    init = initial_logits(config, K).double()
    return {
        "init": init,  # older entries exactly on the threshold (mhc)
        "random": torch.randn(K, generator=gen, dtype=torch.float64),
        "ties": torch.tensor([0.7, 0.7, -2.0, 0.7], dtype=torch.float64),
        "one-hot-far": torch.tensor([0.0, 5.0, 0.0, 0.0], dtype=torch.float64),
    }


def _noise(config: MHCConfig) -> torch.Tensor | None:
    if not config.stochastic:
        return None
    uniform = torch.rand(K, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return gumbel_from_uniform(uniform)


def _autograd_vjp(theta, config, noise, v: torch.Tensor) -> torch.Tensor:
    """J^T v for every row of v ([N, K]), by autograd through project_logits."""
    rows = []
    for row in v:
        t = theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(project_logits(t, config, noise), t, row)
        rows.append(grad)
    return torch.stack(rows)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("where", ["init", "random", "ties", "one-hot-far"])
def test_transposed_jacobian_equals_autograd(name, where):
    config = CONFIGS[name]
    theta, noise = _thetas(config)[where], _noise(config)
    v = torch.randn(3, 5, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mapped = transposed_jacobian(theta, config, noise)(list(v.unbind(-1)))
    expected = _autograd_vjp(theta, config, noise, v.reshape(-1, K)).reshape(v.shape)
    torch.testing.assert_close(torch.stack(mapped, -1), expected, rtol=1e-12, atol=1e-12)


def test_identity_init_keeps_a_live_gradient():
    # DESIGN §1: at theta = e_last the older entries are on the tie, so J^T is not zero
    config = CONFIGS["mhc"]
    theta = initial_logits(config, K).double()
    ones = [torch.tensor(float(k == 0), dtype=torch.float64) for k in range(K)]
    mapped = torch.stack(transposed_jacobian(theta, config)(ones))
    torch.testing.assert_close(mapped, torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64))


def test_transposed_jacobian_refuses_residual_and_batched_logits():
    with pytest.raises(ValueError, match="residual"):
        transposed_jacobian(torch.zeros(K), MHCConfig(mode="residual"))
    with pytest.raises(ValueError, match=r"theta must have shape \[K\]"):
        transposed_jacobian(torch.zeros(2, K), MHCConfig())


def _site_inputs(seed: int = 0, requires_grad: bool = True):
    gen = torch.Generator().manual_seed(seed)
    branch = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    history = [torch.randn(2, 3, 6, generator=gen, dtype=torch.float64, requires_grad=requires_grad) for _ in range(K)]
    return branch, history


def _reference(branch, history, theta, config, noise):
    return ops.mix(branch, history, project_logits(theta, config, noise))


@pytest.mark.parametrize("row_sums", [False, True])
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("where", ["init", "random"])
def test_projected_mix_matches_the_composition(monkeypatch, name, where, row_sums):
    # the autograd function (what site_mix uses under torch.compile), run eagerly in float64
    monkeypatch.setattr(ops, "row_sums_first", lambda device: row_sums)
    config = CONFIGS[name]
    noise = _noise(config)
    theta = _thetas(config)[where].clone().requires_grad_(True)
    branch, history = _site_inputs()
    out = _ProjectedMix.apply(config, theta, noise, branch, *history)
    expected = _reference(branch, history, theta, config, noise)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    cotangent = torch.randn_like(out)
    inputs = [theta, branch, *history]
    got = torch.autograd.grad(out, inputs, cotangent)
    want = torch.autograd.grad(expected, inputs, cotangent)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    if where == "init" and config.mode == "mhc":
        assert got[0].abs().sum() > 0, "the identity init must keep a live logit gradient"


@pytest.mark.parametrize("name", ["mhc", "mhc-identity", "hc", "hc-stochastic"])
def test_projected_mix_gradcheck(name):
    config = CONFIGS[name]
    noise = _noise(config)
    theta = _thetas(config)["random"].clone().requires_grad_(True)  # away from the ties
    branch, history = _site_inputs()

    def fn(theta, branch, *history):
        return _ProjectedMix.apply(config, theta, noise, branch, *history)

    assert torch.autograd.gradcheck(fn, (theta, branch, *history))


def test_projected_mix_skips_gradients_not_asked_for():
    # detach_history: older states without gradient; the function must not fail or return any
    config = CONFIGS["mhc"]
    theta = _thetas(config)["random"].clone().requires_grad_(True)
    branch, history = _site_inputs()
    history = [h.detach() for h in history[:-1]] + history[-1:]
    out = _ProjectedMix.apply(config, theta, None, branch, *history)
    grads = torch.autograd.grad(out.sum(), [theta, history[-1]])
    want = torch.autograd.grad(_reference(branch, history, theta, config, None).sum(), [theta, history[-1]])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


def test_site_mix_is_the_composition_in_eager_and_the_function_when_compiled():
    config = CONFIGS["mhc"]
    theta = initial_logits(config, K).double().requires_grad_(True)
    branch, history = _site_inputs()
    eager = site_mix(branch, history, theta, config)
    assert "ProjectedMix" not in type(eager.grad_fn).__name__  # eager: mix's own backward

    def step(theta, branch, *history):
        return site_mix(branch, history, theta, config)

    out = torch.compile(step, backend="aot_eager", fullgraph=True)(theta, branch, *history)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    inputs = [theta, branch, *history]
    got = torch.autograd.grad(out.square().sum(), inputs)
    want = torch.autograd.grad(eager.square().sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert got[0].abs().sum() > 0
    graphs = torch._dynamo.explain(step)(theta, branch, *history)
    assert graphs.graph_break_count == 0
    assert any("autograd_function_apply" in str(n.target) for g in graphs.graphs for n in g.graph.nodes)
