"""Class 10: ``auto_project=True`` carries a chain across a projection shortcut.

``shortcut(x) + f(x)`` at a ResNet stage start becomes a site whose stream is ``shortcut(x)``; the
chain's older states reach the new shape through a learned map of that site (pooling and a 1x1
conv for NCHW, a linear map when only the last dim changes), exact at init.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mhc_fx
from tests.helpers import assert_compiles_like_eager, assert_exact, chains, perturb_mixing, reasons
from tests.models.zoo import BasicBlock, IdentityShortcutBlock, ResNetCNN, ResNetIdentityShortcut


def resnet(cls=ResNetCNN) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("cls", [ResNetCNN, ResNetIdentityShortcut], ids=["inplace_downsample", "shortcut_module"])
def test_projection_shortcuts_continue_one_chain_exactly(cls):
    model = resnet(cls)
    assert chains(mhc_fx.explain(model)) == (2, 2, 1)  # without auto_project: a chain per stage
    converted = assert_exact(model, X, example_inputs=(X,), auto_project=True)
    report = mhc_fx.explain(converted)
    assert chains(report) == (7,) and report.skipped == [], str(report)
    maps = {n: tuple(p.shape) for n, p in converted.named_parameters() if n.endswith("_project")}
    # the stage-opening sites map the older states: 8 -> 16 and 16 -> 32 channels, 1x1 convs
    assert sorted(maps.values()) == [(16, 8, 1, 1), (32, 16, 1, 1)], maps


def test_without_shapes_the_shortcut_is_skipped_with_the_reason_and_a_warning():
    with pytest.warns(UserWarning, match="auto_project needs the shapes"):
        converted = mhc_fx.convert(resnet(), auto_project=True)
    report = mhc_fx.explain(converted)
    assert chains(report) == (2, 2, 1)
    assert sum("pass example_inputs=" in r for r in reasons(report)) == 2, reasons(report)


def test_mixing_through_the_maps_matches_a_hand_written_reference_and_compiles():
    converted = perturb_mixing(mhc_fx.convert(resnet(), auto_project=True, example_inputs=(X,)), scale=0.5)
    weights = mhc_fx.mixing_weights(converted)
    stage2 = converted.stage2[0]
    # the streams of the chain's first two sites (the inputs of stage 1's blocks), the input of the
    # projection block and its output, seen inside one call of the whole model
    seen, handles = {}, []
    for name, block in (("s0", converted.stage1[0]), ("s1", converted.stage1[1]), ("x", stage2)):
        handles.append(block.register_forward_pre_hook(lambda m, i, name=name: seen.setdefault(name, i[0])))
    handles.append(stage2.register_forward_hook(lambda m, i, o: seen.setdefault("out", o)))
    out = converted(X)
    for handle in handles:
        handle.remove()
    x = seen["x"]
    shortcut, branch = stage2.downsample(x), stage2.bn2(stage2.conv2(F.relu(stage2.bn1(stage2.conv1(x)))))
    w = converted.get_parameter("mhc.stage2.0.site0_project")
    mapped = [F.conv2d(F.adaptive_avg_pool2d(seen[k], (4, 4)), w) for k in ("s0", "s1")]
    alpha = weights["stage2.0.site0"]
    assert alpha.shape == (3,) and (alpha[:2] != 0).any()
    want = branch + sum(a * s for a, s in zip(alpha, [*mapped, shortcut]))
    torch.testing.assert_close(seen["out"], F.relu(want), rtol=1e-5, atol=1e-6)
    assert_compiles_like_eager(converted, X, out, atol=1e-5)


def test_gradients_through_the_maps_match_finite_differences():
    converted = perturb_mixing(mhc_fx.convert(resnet(), auto_project=True, example_inputs=(X,)), scale=0.5).double()
    names = ["mhc.stage2.0.site0_project"]  # (16, 8) weights: a small finite-difference check
    weights = tuple(converted.get_parameter(n).detach().clone().requires_grad_(True) for n in names)
    x = X.double()[:1]

    def loss(*w):
        return torch.func.functional_call(converted, dict(zip(names, w)), (x,)).sum()

    assert torch.autograd.gradcheck(loss, weights, fast_mode=True)


def test_another_input_size_maps_onto_the_new_spatial_size():
    model = resnet()
    converted = perturb_mixing(mhc_fx.convert(model, auto_project=True, example_inputs=(X,)))
    big = torch.randn(3, 3, 16, 16)
    assert converted(big).shape == model(big).shape
    assert torch.equal(mhc_fx.convert(model, auto_project=True, example_inputs=(X,))(big), model(big))


def test_state_dict_round_trip_and_meta_init():
    model = resnet()
    converted = perturb_mixing(mhc_fx.convert(model, auto_project=True, example_inputs=(X,)))
    fresh = mhc_fx.convert(model, auto_project=True, example_inputs=(X,))
    fresh.load_state_dict(converted.state_dict())
    assert torch.equal(fresh(X), converted(X))
    with torch.device("meta"):
        torch.manual_seed(0)
        meta = ResNetCNN().eval()
    meta = mhc_fx.convert(meta, auto_project=True, example_inputs=(X.to("meta"),)).to_empty(device="cpu")
    meta.load_state_dict(model.state_dict(), strict=False)  # the original's weights; mhc.* at their init
    for name, buf in model.named_buffers():
        meta.get_buffer(name).copy_(buf)
    assert torch.equal(meta(X), model(X))
    weight = meta.get_parameter("mhc.stage2.0.site0_project")
    assert torch.isfinite(weight).all() and weight.abs().max() <= 1 / 8**0.5 + 1e-6  # kaiming-uniform bound


class TokenMerge(nn.Module):
    """A strided shortcut over the tokens that doubles the width: (B, T, C) -> (B, T/2, 2C) has
    neither an NCHW map nor a last-dim one."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.g = nn.Linear(dim, dim)
        self.down = nn.Conv1d(dim, 2 * dim, 2, stride=2)
        self.down2 = nn.Conv1d(dim, 2 * dim, 2, stride=2)
        self.f = nn.Linear(2 * dim, 2 * dim)

    def forward(self, x):
        x = x + self.g(x)
        shortcut = self.down(x.transpose(1, 2)).transpose(1, 2)
        return shortcut + self.f(F.gelu(self.down2(x.transpose(1, 2)).transpose(1, 2)))


def test_shapes_without_a_map_are_skipped_with_the_reason():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8)
    report = mhc_fx.explain(TokenMerge(), auto_project=True, example_inputs=(x,))
    assert any("auto_project cannot follow" in r for r in reasons(report)), str(report)


@pytest.mark.parametrize("block", [BasicBlock, IdentityShortcutBlock])
def test_a_projection_block_at_the_start_of_a_model_starts_its_chain(block):
    torch.manual_seed(0)
    model = nn.Sequential(block(3, 8, 2), block(8, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    converted = assert_exact(model, x, example_inputs=(x,), auto_project=True)
    report = mhc_fx.explain(converted)
    assert chains(report) == (2,), str(report)  # nothing older to map: no projection weight
    assert not [n for n, _ in converted.named_parameters() if n.endswith("_project")]
