"""Export, finite checks, determinism of stochastic mixing, bad dtypes (issue 9 items)."""

from __future__ import annotations

import pytest
import torch

import mhc_fx
from tests.helpers import NonMetaOutputs, perturb_mixing
from tests.models.gpt import GPT


def _converted(**options):
    torch.manual_seed(0)
    return perturb_mixing(mhc_fx.convert(GPT(layers=3, dim=32), **options), seed=2)


def test_torch_export_of_a_converted_model_runs_and_matches_with_dynamic_shapes():
    model = _converted().eval()
    x = torch.randint(0, 64, (2, 16))
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("length", max=64)},)
    program = torch.export.export(model, (x,), dynamic_shapes=dims)
    mixes = [n for n in program.graph.nodes if n.op == "call_function" and "mhc_fx.mix" in str(n.target)]
    assert len(mixes) == 5  # 6 sites, the chain's first one is a plain add
    for shape in [(2, 16), (3, 9), (5, 40)]:
        x = torch.randint(0, 64, shape)
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strict", [True, False])
def test_exported_program_trains_like_the_model(strict):
    # strict export traces with Dynamo (torch.compiler.is_compiling() is True there): the sites
    # must stay mix calls with their gradients, not an autograd function's forward inlined
    # without grad
    model = _converted().train()
    x = torch.randint(0, 64, (2, 8))
    program = torch.export.export(model, (x,), strict=strict)
    exported = program.module()
    exported(x).square().mean().backward()
    # the exported module may share its parameters with the model: take its gradients first
    got = {
        n: None if p.grad is None else p.grad.clone() for n, p in exported.named_parameters() if n.startswith("mhc.")
    }
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    want = {n: p.grad for n, p in model.named_parameters() if n.startswith("mhc.")}
    assert got.keys() == want.keys() and len(want) == 5
    assert sum(w.abs().sum() for w in want.values()) > 0
    for name, w in want.items():
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], w, msg=name)


def test_check_finite_names_the_site():
    model = _converted(check_finite=True)
    x = torch.randint(0, 64, (2, 8))
    model(x)  # finite: no error
    with torch.no_grad():
        model.get_parameter("mhc.blocks.1.site0").fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"site 'blocks.1.site0'.*non-finite mixing weights"):
        model(x)
    model = _converted(check_finite=True)
    with torch.no_grad():
        model.blocks[0].mlp.proj.bias.fill_(float("inf"))  # the stream turns non-finite after site 1
    with pytest.raises(FloatingPointError, match=r"site 'blocks.1.site0'.*history state"):
        model(x)


def test_check_finite_is_off_by_default():
    model = _converted()
    with torch.no_grad():
        model.get_parameter("mhc.blocks.1.site0").fill_(float("nan"))
    assert torch.isnan(model(torch.randint(0, 64, (2, 8)))).any()


def test_stochastic_is_reproducible_under_a_seed_and_deterministic_in_eval():
    model = _converted(stochastic=True).train()
    x = torch.randint(0, 64, (2, 8))
    torch.manual_seed(11)
    a = model(x)
    torch.manual_seed(11)
    b = model(x)
    c = model(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    model.eval()
    plain = _converted().eval()
    assert torch.equal(model(x), model(x)) and torch.equal(model(x), plain(x))


@pytest.mark.parametrize("mode", ["mhc", "hc"])
def test_stochastic_model_mixing_logits_get_gradient_at_init(mode):
    # regression: stochastic mhc at the identity init had exactly zero mixing gradients
    torch.manual_seed(0)
    model = mhc_fx.convert(GPT(layers=2, dim=32), mode=mode, stochastic=True).train()
    for seed in range(6):  # one sample may leave a site at a vertex (locally constant); several do not
        torch.manual_seed(seed)
        model(torch.randint(0, 64, (2, 8))).logsumexp(-1).mean().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if name.startswith("mhc.")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), grads


@pytest.mark.parametrize("options", [dict(mode="hc"), dict(), dict(stochastic=True)], ids=["hc", "mhc", "stochastic"])
def test_converted_model_keeps_every_tensor_on_the_model_device(options):
    # no host tensor copied to the device per site and call (blocking on a GPU; breaks CUDA graphs)
    model = mhc_fx.convert(GPT(layers=2, dim=32), **options).to("meta").train()
    with NonMetaOutputs() as recorder:
        model(torch.zeros(2, 8, dtype=torch.long, device="meta")).sum().backward()
    assert recorder.ops == []


def test_mismatched_history_dtype_is_a_clear_error_not_a_cast():
    with pytest.raises(TypeError, match=r"history\[0\] has dtype torch.float64"):
        mhc_fx.mix(torch.randn(2, 3), [torch.randn(2, 3, dtype=torch.float64)], torch.ones(1))


@pytest.mark.parametrize("method", ["sort", "pairwise"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_projections_propagate_non_finite_logits(method, bad):
    theta = torch.tensor([0.3, bad, 0.1, 0.9])
    assert torch.isnan(mhc_fx.projections.project_simplex(theta, method=method)).all()
    assert torch.isnan(mhc_fx.projections.project_floored_simplex(theta, 0.1, method=method)).all()


def test_pickling_a_whole_converted_model_points_at_state_dict(tmp_path):
    model = _converted()
    with pytest.raises(TypeError, match="state_dict"):
        torch.save(model, tmp_path / "whole.pt")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    again = mhc_fx.convert(GPT(layers=3, dim=32))
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(again(x), model(x))


def test_instance_level_forward_override_is_a_clear_error_not_dropped():
    # a wrapper set on the instance (accelerate's device_map hooks do this) would be replaced
    # by the rewritten forward; convert refuses instead of silently dropping it
    torch.manual_seed(0)
    model = GPT(layers=2, dim=32)
    inner = model.blocks[1].forward
    model.blocks[1].forward = lambda *args, **kwargs: inner(*args, **kwargs)
    with pytest.raises(ValueError, match=r"forward of blocks\.1 \(Block\) is overridden on the instance"):
        mhc_fx.convert(model)
    assert "forward" in model.blocks[1].__dict__  # the user's model is left as it was
