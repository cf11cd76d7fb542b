"""`mhc_fx.compat` layers: `MHCSkip`, `MHCSequential` and the conv blocks with the package's
signatures and options, on mhc_fx's math; each kept difference is warned once."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import mhc_fx
from mhc_fx import compat
from mhc_fx.compat.layers.conv_mhc import MHCBasicBlock, MHCBottleneck, MHCConv2d
from tests.test_compat_config import fresh_compat_state  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.usefixtures("fresh_compat_state"),
    pytest.mark.filterwarnings("ignore::mhc_fx.compat.CompatWarning"),  # asserted where they matter
]


def _params(cls) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p != "self"]


def test_skip_has_the_package_positional_signature():
    assert _params(compat.MHCSkip)[:10] == [
        "mode", "max_history", "constraint", "epsilon", "temperature", "init", "auto_project", "use_gating",
        "prune_threshold", "stochastic",
    ]  # fmt: skip
    skip = compat.MHCSkip("hc", 3, "simplex", 0.2, 2.0)
    assert (skip.mode, skip.max_history, skip.epsilon, skip.temperature) == ("hc", 3, 0.2, 2.0)
    default = compat.MHCSkip()
    assert (default.mode, default.max_history, default.constraint, default.epsilon) == ("mhc", 4, "simplex", 0.1)
    assert (default.init, default.use_gating, default.prune_threshold, default.stochastic) == ("identity", 0, 0, 0)


@pytest.mark.parametrize("constraint", ["simplex", "identity"])
def test_identity_init_is_exactly_the_residual_and_matches_mhc_fx(constraint):
    skip = compat.MHCSkip(mode="mhc", init="identity", max_history=4, constraint=constraint)
    x = torch.randn(2, 32)
    history = [torch.randn(2, 32) for _ in range(3)]
    assert torch.equal(skip(torch.zeros(2, 32), history[-2:]), history[-1])  # the package: within 1e-3
    fx = mhc_fx.MHCSkip(max_history=4, constraint=constraint, epsilon=0.1)
    assert torch.equal(skip(x, history), fx(x, history))


@pytest.mark.parametrize("mode", ["hc", "mhc"])
def test_uniform_init_weighs_every_state_equally(mode):
    skip = compat.MHCSkip(mode, 4, init="uniform")
    assert torch.equal(skip.mixing_logits, torch.zeros(4))
    x = torch.randn(3, 5)
    history = [torch.randn(3, 5) for _ in range(4)]
    for k in (2, 4):
        torch.testing.assert_close(skip.weights(k), torch.full((k,), 1 / k))
        torch.testing.assert_close(skip(x, history[-k:]), x + torch.stack(history[-k:]).mean(0))
    assert "init='uniform'" in repr(skip)


def test_residual_mode_adds_the_latest_state():
    skip = compat.MHCSkip(mode="residual", use_gating=True, prune_threshold=0.5)
    x, h = torch.randn(2, 32), torch.randn(2, 32)
    assert torch.equal(skip(x, [torch.randn(2, 32), h]), x + h)
    assert skip.mixing_logits is None and skip(x, []) is x


def test_gating_scales_the_history_mix():
    skip = compat.MHCSkip(max_history=3, use_gating=True)
    assert skip.gate_logit.item() == 2.0 and "gate_logit" in skip.state_dict()
    x = torch.randn(2, 6, requires_grad=True)
    history = [torch.randn(2, 6) for _ in range(3)]
    out = skip(x, history)
    torch.testing.assert_close(out, x + torch.sigmoid(torch.tensor(2.0)) * history[-1])
    out.square().sum().backward()
    assert skip.gate_logit.grad.abs() > 0 and skip.mixing_logits.grad is not None
    assert torch.equal(x.grad, 2 * out.detach())


def _package_prune_reference(skip, x, history):
    """The package's loop: states whose weight is below the threshold are skipped."""
    alphas = mhc_fx.projections.mixing_weights(skip.mixing_logits[-len(history) :], skip.config)
    out = x
    for alpha, state in zip(alphas, history):
        if alpha >= skip.prune_threshold:
            out = out + alpha * state
    return out


@pytest.mark.parametrize("mode", ["hc", "mhc"])
def test_pruning_masks_small_weights_without_a_host_sync(mode):
    skip = compat.MHCSkip(mode, 4, prune_threshold=0.2)
    with torch.no_grad():
        skip.mixing_logits.copy_(torch.tensor([0.0, 0.1, 1.5, 1.6]))
    alphas = skip.weights(4)
    assert (alphas < 0.2).any() and (alphas >= 0.2).sum() >= 2  # some pruned, some kept
    x = torch.randn(2, 5)
    history = [torch.randn(2, 5) for _ in range(4)]
    torch.testing.assert_close(skip(x, history), _package_prune_reference(skip, x, history))
    torch._dynamo.reset()
    compiled = torch.compile(skip, backend="eager", fullgraph=True)  # the package's loop breaks here
    torch.testing.assert_close(compiled(x, history), skip(x, history))


def test_options_are_settable_like_the_package_attributes():
    skip = compat.MHCSkip(stochastic=False)
    skip.temperature = 0.5
    skip.constraint = "identity"
    skip.epsilon = 0.2
    skip.stochastic = True
    assert skip.config == mhc_fx.MHCConfig(temperature=0.5, constraint="identity", epsilon=0.2, stochastic=True)
    with pytest.raises(ValueError, match="temperature"):
        skip.temperature = 0.0
    with pytest.raises(AttributeError):
        skip.auto_project = True  # shapes of projections are learned: fixed at construction


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"init": "random"}, ValueError, "init must be one of"),
        ({"prune_threshold": 1.5}, ValueError, "prune_threshold"),
        ({"prune_threshold": "x"}, TypeError, "prune_threshold"),
        ({"use_gating": "yes"}, TypeError, "use_gating"),
        ({"mode": "dense"}, ValueError, "mode"),
        ({"max_history": 0}, ValueError, "max_history"),
    ],
)
def test_skip_rejects_bad_arguments_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        compat.MHCSkip(**kwargs)


def test_stochastic_samples_in_training_only():
    torch.manual_seed(0)
    skip = compat.MHCSkip("mhc", 4, stochastic=True, temperature=0.5)
    x = torch.randn(1, 8)
    history = [torch.randn(1, 8) for _ in range(4)]
    samples = [skip(x, history) for _ in range(4)]
    assert any(not torch.equal(samples[0], s) for s in samples[1:])
    skip.eval()
    assert torch.equal(skip(x, history), x + history[-1]) and torch.equal(skip(x, history), skip(x, history))


def test_skip_gradients_and_auto_project():
    skip = compat.MHCSkip(mode="mhc", max_history=4)
    x = torch.randn(2, 32, requires_grad=True)
    history = [torch.randn(2, 32, requires_grad=True) for _ in range(2)]
    skip(x, history).sum().backward()
    assert x.grad is not None and history[0].grad is not None and skip.mixing_logits.grad is not None
    projecting = compat.MHCSkip(mode="mhc", max_history=3, auto_project=True)
    out = projecting(torch.randn(2, 4), [torch.randn(2, 8), torch.randn(2, 8)])
    assert out.shape == (2, 4) and len(projecting.projections) == 1


def test_sequential_has_the_package_signature_and_keys():
    assert _params(compat.MHCSequential) == [
        "modules", "max_history", "mode", "constraint", "epsilon", "temperature", "clear_history_each_forward",
        "detach_history", "use_gating", "use_checkpointing", "prune_threshold", "stochastic",
    ]  # fmt: skip
    seq = compat.MHCSequential([nn.Linear(4, 4), nn.Linear(4, 4)], 2, "hc", None, None, 2.0, None, None, True)
    assert seq.max_history == 2 and seq.skip_layers[0].mode == "hc" and seq.skip_layers[1].temperature == 2.0
    assert all(isinstance(s, compat.MHCSkip) and s.use_gating for s in seq.skip_layers)
    assert set(seq.state_dict()) == {
        f"{p}.{i}.{n}"
        for i in range(2)
        for p, names in (("wrapped_modules", ("weight", "bias")), ("skip_layers", ("mixing_logits", "gate_logit")))
        for n in names
    }
    identity = compat.MHCSequential([nn.Identity(), nn.Identity()], mode="residual")
    assert torch.equal(identity(torch.ones(1, 16)), torch.full((1, 16), 4.0))  # the package's own check


def test_sequential_history_lives_in_one_call():
    torch.manual_seed(0)
    layers = [nn.Linear(8, 8) for _ in range(3)]
    seq = compat.MHCSequential(layers, max_history=2)
    with torch.no_grad():
        for skip in seq.skip_layers:
            skip.mixing_logits.normal_()  # away from the identity, so history matters
    x = torch.randn(4, 8)
    first = seq(x)
    assert isinstance(seq.history_buffer, compat.HistoryBuffer) and len(seq.history_buffer) == 0
    seq.history_buffer.append(torch.randn(4, 8))  # package code may touch it; no call reads it
    assert torch.equal(seq(x), first) and len(seq.history_buffer) == 0
    seq.clear_history()
    with pytest.warns(compat.CompatWarning, match="clear_history_each_forward=False"):
        kept = compat.MHCSequential(layers, max_history=2, clear_history_each_forward=False)
    kept.load_state_dict(seq.state_dict())
    assert torch.equal(kept(x), first) and torch.equal(kept(x), first)  # nothing carried over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compat.MHCSequential(layers, clear_history_each_forward=False)  # once per process


def test_sequential_at_init_is_the_residual_network():
    layers = [nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(5)]
    x = torch.randn(3, 16)
    want = compat.MHCSequential(layers, mode="residual")(x)
    for constraint in ("simplex", "identity"):
        assert torch.equal(compat.MHCSequential(layers, mode="mhc", constraint=constraint)(x), want)


def test_detach_history_keeps_the_latest_streams_gradient():
    torch.manual_seed(0)
    layers = [nn.Linear(6, 6) for _ in range(3)]
    x = torch.randn(2, 6, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_default = compat.MHCSequential(layers)  # True by default, as in the package: no warning
    assert all(s.config.detach_history for s in by_default.skip_layers)
    with pytest.warns(compat.CompatWarning, match="detaches the older states only"):
        explicit = compat.MHCSequential(layers, detach_history=True)
    reference = mhc_fx.MHCSequential(layers, detach_history=True, epsilon=0.1)
    grads = []
    for model in (explicit, reference):
        x.grad = None
        model(x).sum().backward()
        grads.append(x.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])


def test_sequential_checkpointing_gives_the_unchecked_gradients():
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(5, 5), nn.Tanh()) for _ in range(4)]
    options = dict(max_history=3, use_gating=True, detach_history=False)
    plain = compat.MHCSequential(layers, **options)
    checked = compat.MHCSequential(layers, **options, use_checkpointing=True)
    checked.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, requires_grad=True)
    grads = []
    for model in (plain, checked):
        model.zero_grad()
        x.grad = None
        model(x).square().sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_sequential_passes_pruning_and_stochastic_to_every_skip():
    seq = compat.MHCSequential([nn.Linear(3, 3)] * 2, prune_threshold=0.2, stochastic=True, temperature=0.5)
    assert all(s.prune_threshold == 0.2 and s.stochastic and s.temperature == 0.5 for s in seq.skip_layers)


def _resnet_basic(block, x):
    identity = x if block.downsample is None else block.downsample(x)
    out = torch.relu(block.bn1(block.conv1(x)))
    return torch.relu(block.bn2(block.conv2(out)) + identity)


def _resnet_bottleneck(block, x):
    identity = x if block.downsample is None else block.downsample(x)
    out = torch.relu(block.bn1(block.conv1(x)))
    out = torch.relu(block.bn2(block.conv2(out)))
    return torch.relu(block.bn3(block.conv3(out)) + identity)


@pytest.mark.parametrize(
    "make, reference, in_shape, out_shape",
    [
        (lambda: MHCBasicBlock(8, 8), _resnet_basic, (2, 8, 8, 8), (2, 8, 8, 8)),
        (lambda: MHCBasicBlock(8, 16, stride=2), _resnet_basic, (2, 8, 8, 8), (2, 16, 4, 4)),
        (lambda: MHCBottleneck(16, 4), _resnet_bottleneck, (2, 16, 8, 8), (2, 16, 8, 8)),
        (lambda: MHCBottleneck(8, 4, stride=2), _resnet_bottleneck, (2, 8, 8, 8), (2, 16, 4, 4)),
    ],
)
def test_blocks_are_resnet_blocks_within_each_call(make, reference, in_shape, out_shape):
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(*in_shape)
    out = block(x)
    assert out.shape == out_shape
    torch.testing.assert_close(out, reference(block, x))
    assert torch.equal(block(x), out)  # the package mixed the previous call's states here
    assert block(torch.randn(1, *in_shape[1:])).shape == (1, *out_shape[1:])  # new batch size: fine
    assert len(block.history_buffer) == 0
    block.clear_history()
    block.train()
    x.requires_grad_(True)
    block(x).sum().backward()
    assert x.grad is not None and block.conv1.weight.grad is not None and block.conv2.weight.grad is not None


def test_conv_is_the_convolution_within_each_call():
    conv = MHCConv2d(3, 6, kernel_size=3, stride=2, padding=1, mode="hc", max_history=3)
    assert set(conv.state_dict()) == {"conv.weight", "conv.bias", "skip.mixing_logits", "projection.weight"}
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = conv(x)
    assert out.shape == (2, 6, 4, 4) and torch.equal(out, conv.conv(x)) and torch.equal(conv(x), out)
    assert conv.skip.mode == "hc" and conv.skip.max_history == 3 and len(conv.history_buffer) == 0
    out.sum().backward()
    assert x.grad is not None
    same = MHCConv2d(4, 4, 3, padding=1)
    assert not same.needs_projection and "projection.weight" not in same.state_dict()


def test_conv_layers_warn_once_that_history_stays_in_the_call():
    block_params = ["in_channels", "out_channels", "stride", "max_history", "mode", "constraint", "epsilon"]
    assert _params(MHCBasicBlock) == block_params and _params(MHCBottleneck) == block_params
    assert _params(MHCConv2d)[:8] == ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                                      "groups", "bias"]  # fmt: skip
    with pytest.warns(compat.CompatWarning, match="keeps no history across calls"):
        MHCBasicBlock(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MHCConv2d(2, 2, 1)
        MHCBottleneck(4, 1)
    with pytest.warns(compat.CompatWarning, match="detaches the older states only"):
        MHCConv2d(2, 2, 1, detach_history=True)
