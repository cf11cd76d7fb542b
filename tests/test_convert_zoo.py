"""`mhc_fx.convert` / `explain` over the whole model zoo (own models + tiny Hugging Face ones).

For every model and mode: exact equality to the original at init (outputs and the
gradient of every original parameter), the true site count and chains, live mixing
weights (one SGD step on the ``mhc.`` parameters changes the output), train/eval,
call signature and output type, state_dict / checkpoint loading / deepcopy, and the
original left untouched. Then bad inputs, include/exclude scoping and inject_mhc.

Known bugs of mhc_fx are marked ``xfail(strict=True)`` case by case (see KNOWN_BUGS):
they stay visible and the mark must be removed when the bug is fixed.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mhc_fx
from tests.models.gpt import GPT, Block
from tests.models.hf_zoo import HF_ZOO, gpt2_with_dropout
from tests.models.zoo import BY_NAME, SEED, ZOO, AliasedInplace, ConvNeXtBlock, ZooEntry, _seeded

ALL = ZOO + HF_ZOO

MODES = {
    "residual": {"mode": "residual"},
    "mhc_simplex": {"mode": "mhc", "constraint": "simplex"},
    "mhc_identity": {"mode": "mhc", "constraint": "identity"},
    "hc": {"mode": "hc"},
}
EXACT_MODES = ("residual", "mhc_simplex", "mhc_identity")  # identical to the original at init

# (model, test, mode or None for every mode) -> reason
KNOWN_BUGS: dict = {}


def cases(test: str, modes=tuple(MODES)):
    out = []
    for entry in ALL:
        for mode in modes:
            reason = KNOWN_BUGS.get((entry.name, test, mode)) or KNOWN_BUGS.get((entry.name, test, None))
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []
            out.append(pytest.param(entry, mode, id=f"{entry.name}-{mode}", marks=marks))
    return out


# -----------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------
def inputs(entry: ZooEntry) -> tuple[tuple, dict]:
    return entry.example_inputs(), (entry.kwargs() if entry.kwargs else {})


def call(model: nn.Module, entry: ZooEntry):
    args, kwargs = inputs(entry)
    return model(*args, **kwargs)


def other_inputs(entry: ZooEntry) -> tuple[tuple, dict]:
    """Inputs of another batch size (3) and, for token inputs, another length (5)."""
    (x,), kwargs = inputs(entry)
    g = torch.Generator().manual_seed(99)
    if x.is_floating_point():
        return (torch.randn((3, *x.shape[1:]), generator=g),), {}
    shape = (3, 5, *x.shape[2:])
    kwargs = {k: torch.ones(shape, dtype=v.dtype) for k, v in kwargs.items()}
    return (torch.randint(0, int(x.max()) + 1, shape, generator=g),), kwargs


def tensors(out) -> list[torch.Tensor]:
    """The tensors of an output (a tensor, a tuple, a ModelOutput), caches ignored."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensors(v)]
    return []


def float_outputs(out) -> list[torch.Tensor]:
    return [t for t in tensors(out) if t.is_floating_point()]


def assert_close_outputs(got, want) -> None:
    g, w = float_outputs(got), float_outputs(want)
    assert len(g) == len(w) and len(w) > 0
    for a, b in zip(g, w):
        assert a.shape == b.shape and a.dtype == b.dtype
        scale = max(1.0, b.abs().max().item())
        diff = (a - b).abs().max().item()
        assert diff <= 1e-6 * scale, f"max abs diff {diff} (output magnitude {scale})"


def loss_of(out) -> torch.Tensor:
    """Not stationary: a fixed random linear term plus the sum of squares."""
    total = 0.0
    for i, t in enumerate(float_outputs(out)):
        r = torch.randn(t.shape, generator=torch.Generator().manual_seed(100 + i))
        total = total + (t * r).sum() + 0.5 * (t**2).sum()
    return total


def convert_as(model: nn.Module, mode: str) -> nn.Module:
    return mhc_fx.convert(model, **MODES[mode])


def mhc_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.startswith("mhc.")}


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, state: dict, entry: ZooEntry, output=None, training=None) -> None:
    """``model`` is a plain original: no instance forward, no runtime, state_dict as before."""
    assert not mhc_fx.is_converted(model)
    for path, m in model.named_modules():
        assert "forward" not in m.__dict__, f"{path or '(root)'} got an instance forward"
        assert not any(k.startswith("_mhc_fx") for k in m.__dict__), f"{path or '(root)'} holds mhc_fx state"
    assert "mhc" not in model._modules
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"state_dict[{k!r}] changed"
    if training is not None:
        assert [m.training for m in model.modules()] == training
    if output is not None:
        was = model.training
        model.eval()
        with torch.no_grad():
            assert_close_outputs(call(model, entry), output)
        model.train(was)


def perturb_(model: nn.Module, seed: int = 7) -> nn.Module:
    """Make ``model`` look trained: every parameter and BN statistic moves."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.05 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.mul_(1.1)
    return model


# -----------------------------------------------------------------------------
# exact at init: outputs and gradients
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, mode", cases("equal", EXACT_MODES))
def test_equal_to_original_at_init(entry, mode):
    original = entry.make()
    converted = convert_as(original, mode)
    # eval: outputs; train (dropout 0; BatchNorm uses batch statistics): outputs and grads
    for training in (False, True):
        original.train(training)
        converted.train(training)
        out_o, out_c = call(original, entry), call(converted, entry)
        assert_close_outputs(out_c, out_o)
    original.zero_grad()
    converted.zero_grad()
    loss_of(out_o).backward()
    loss_of(out_c).backward()
    for name, p in original.named_parameters():
        q = converted.get_parameter(name)
        if p.grad is None:
            assert q.grad is None, f"{name}: the converted model has a gradient the original has not"
            continue
        assert q.grad is not None, f"{name}: no gradient in the converted model"
        scale = max(1.0, p.grad.abs().max().item())
        diff = (q.grad - p.grad).abs().max().item()
        assert diff <= 1e-6 * scale, f"{name}: grad differs by {diff}"


# -----------------------------------------------------------------------------
# sites and chains
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, mode", cases("sites"))
def test_site_count_and_chains(entry, mode):
    original = entry.make()
    planned = mhc_fx.explain(original, mode=MODES[mode]["mode"])  # explain must not modify the original
    converted = convert_as(original, mode)
    report = mhc_fx.explain(converted)
    assert [s.name for s in planned.sites] == [s.name for s in report.sites]
    assert len(report.sites) == entry.sites, str(report)
    assert tuple(len(c) for c in report.chains.values()) == entry.chains, str(report)
    h = converted.__dict__["_mhc_fx_runtime"].config.max_history
    for sites in report.chains.values():
        assert [s.position for s in sites] == list(range(1, len(sites) + 1))
        assert [s.history for s in sites] == [min(s.position, h) for s in sites]
        assert all(s.mode == MODES[mode]["mode"] for s in sites)
    # parameters: one logit vector per site with K >= 2 (not in residual mode), under mhc.
    expected = set() if mode == "residual" else {f"mhc.{s.name}" for s in report.sites if s.history >= 2}
    assert set(mhc_params(converted)) == expected
    for s in report.sites:
        if f"mhc.{s.name}" in expected:
            assert converted.get_parameter(f"mhc.{s.name}").shape == (s.history,)
    weights = mhc_fx.mixing_weights(converted)
    assert set(weights) == {s.name for s in report.sites}
    if mode in EXACT_MODES:
        for name, alpha in weights.items():
            e_last = torch.zeros_like(alpha)
            e_last[-1] = 1
            assert torch.equal(alpha, e_last), name
    if entry.sites == 0:  # returned unchanged: no forward replaced, no parameter added
        assert "no residual site" in str(report)
        assert all("forward" not in m.__dict__ for m in converted.modules())
        assert not mhc_params(converted)


def _chain_starts(report) -> list[str]:
    return [sites[0].module_path for sites in report.chains.values()]


def test_chain_gpt_spans_blocks():
    report = mhc_fx.explain(mhc_fx.convert(GPT(layers=4, dim=32)))
    assert list(report.chains) == [0]
    assert [s.name for s in report.chains[0]] == [f"blocks.{i}.site{j}" for i in range(4) for j in range(2)]


def test_chain_postnorm_through_layernorm():
    report = mhc_fx.explain(mhc_fx.convert(BY_NAME["postnorm"].make()))
    assert len(report.chains) == 1 and len(report.chains[0]) == 6


def test_chain_resnet_restarts_at_projection():
    report = mhc_fx.explain(mhc_fx.convert(BY_NAME["resnet_cnn"].make()))
    assert _chain_starts(report) == ["stage1.0", "stage2.1", "stage3.1"]
    where = [s.where for s in report.skipped]
    assert where == ["stage2.0 add#0", "stage3.0 add#0"]  # the projection-shortcut adds
    assert all("neither operand" in s.reason for s in report.skipped)


@pytest.mark.skipif(not HF_ZOO, reason="transformers not installed")
def test_chain_hf_resnet_restarts_at_projection():
    entry = next(e for e in HF_ZOO if e.name == "hf_resnet")
    report = mhc_fx.explain(mhc_fx.convert(entry.make()))
    assert _chain_starts(report) == ["encoder.stages.0.layers.0", "encoder.stages.1.layers.1"]
    assert [s.where for s in report.skipped] == ["encoder.stages.1.layers.0 add#0"]


# -----------------------------------------------------------------------------
# the mixing weights are live; gradients reach the first layer
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, mode", cases("learn"))
def test_one_step_changes_output(entry, mode):
    converted = convert_as(entry.make(), mode)
    converted.eval()  # eval: BatchNorm statistics stay fixed, so only the step can move the output
    with torch.no_grad():
        before = call(converted, entry)
    params = mhc_params(converted)
    has_weights = mode != "residual" and any(n > 1 for n in entry.chains)
    assert bool(params) == has_weights
    converted.zero_grad()
    loss_of(call(converted, entry)).backward()
    first = converted.get_submodule(entry.first_layer).weight
    assert first.grad is not None and first.grad.abs().max() > 0, "no gradient reaches the first layer"
    if not has_weights:
        return
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name}: zero gradient (tie-aware projection?)"
    if mode == "mhc_simplex":
        # All entries tie at init: the gradient is g_k - mean(g), summing to 0. In float32 the sum
        # keeps the rounding of the g_k (hundreds of times the centred values when they are close,
        # and which rounding depends on the CPU's kernels), so the check runs in float64.
        exact = copy.deepcopy(converted).double()
        args, kwargs = inputs(entry)
        args = [a.double() if a.is_floating_point() else a for a in args]
        loss_of(exact(*args, **kwargs)).backward()
        for name, p in mhc_params(exact).items():
            assert abs(p.grad.sum().item()) <= 1e-9 * p.grad.abs().max().item(), name
    # An older state k enters a sparse projection's support iff grad_k < grad_last. The
    # loss may prefer the pure residual at every site (grad_k > grad_last for all k, so
    # no step of any size changes alpha); then -loss, as good a loss, prefers the others.
    if mode != "hc" and not any((p.grad[:-1] < p.grad[-1]).any() for p in params.values()):
        for p in params.values():
            p.grad.neg_()
    # lr large enough whatever the gradient scale: the largest logit moves by 1
    lr = 1.0 / max(p.grad.abs().max().item() for p in params.values())
    torch.optim.SGD(params.values(), lr=lr).step()
    with torch.no_grad():
        after = call(converted, entry)
    diff = max((a - b).abs().max().item() for a, b in zip(float_outputs(after), float_outputs(before)))
    assert diff > 1e-5, "the output did not change after a step on the mixing weights"


# -----------------------------------------------------------------------------
# train/eval, call signature, output type
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, mode", cases("interface"))
def test_train_eval_signature_output_type(entry, mode):
    original = entry.make()
    converted = convert_as(original, mode)
    assert type(converted) is type(original)
    assert inspect.signature(converted.forward) == inspect.signature(original.forward)
    for training in (True, False, True):
        converted.train(training)
        assert all(m.training == training for m in converted.modules())
    converted.eval()
    assert all(not m.training for m in converted.modules())
    original.eval()
    args, kwargs = inputs(entry)
    with torch.no_grad():
        out_o = original(*args, **kwargs)
        positional = converted(*args, **kwargs)
        keyword = converted(**{entry.input_name: args[0]}, **kwargs)
    assert type(positional) is type(out_o) and type(keyword) is type(out_o)
    if isinstance(out_o, Mapping):
        assert list(positional.keys()) == list(out_o.keys()) == list(keyword.keys())
    assert_close_outputs(keyword, positional)
    if mode in EXACT_MODES:
        assert_close_outputs(positional, out_o)
    # other batch (and sequence) sizes than the ones seen at convert time
    other_args, other_kwargs = other_inputs(entry)
    with torch.no_grad():
        other = converted(*other_args, **other_kwargs)
        if mode in EXACT_MODES:
            assert_close_outputs(other, original(*other_args, **other_kwargs))
    assert float_outputs(other)[0].shape[0] == other_args[0].shape[0]
    # train mode runs too (and gives the original's output in the exact modes: dropout is 0)
    converted.train()
    original.train()
    out_t = converted(*args, **kwargs)
    assert all(torch.isfinite(t).all() for t in float_outputs(out_t))
    if mode in EXACT_MODES:
        assert_close_outputs(out_t, original(*args, **kwargs))


def _dropout_models():
    out = [pytest.param(lambda: GPT(layers=2, dim=16, dropout=0.2), False, id="gpt")]
    if HF_ZOO:
        out.append(pytest.param(gpt2_with_dropout, True, id="hf_gpt2"))
    return out


@pytest.mark.parametrize("mode", ["residual", "mhc_simplex"])
@pytest.mark.parametrize("make, hf", _dropout_models())
def test_dropout_honoured_in_train_mode(make, hf, mode):
    torch.manual_seed(0)
    original = make()
    converted = mhc_fx.convert(original, **MODES[mode])
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(3))

    def out(model):
        result = model(idx)
        return result.last_hidden_state if hf else result

    for model in (original, converted):
        model.train()
        assert not torch.equal(out(model), out(model)), "dropout inactive in train mode"
        model.eval()
        assert torch.equal(out(model), out(model)), "eval mode is not deterministic"
    original.train()
    converted.train()
    for seed in (11, 12):
        torch.manual_seed(seed)
        want = out(original)
        torch.manual_seed(seed)
        got = out(converted)
        assert torch.equal(got, want), "same seed, same dropout masks: the outputs must match"


# -----------------------------------------------------------------------------
# state_dict, checkpoints, deepcopy
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, mode", cases("state"))
def test_state_dict_keeps_original_keys(entry, mode):
    original = entry.make()
    sd_o = original.state_dict()
    converted = convert_as(original, mode)
    sd_c = converted.state_dict()
    for k, v in sd_o.items():
        assert k in sd_c, f"{k} lost"
        assert torch.equal(sd_c[k], v), f"{k} changed"
    new = set(sd_c) - set(sd_o)
    assert all(k.startswith("mhc.") for k in new), sorted(new)
    assert {k for k in new if k in dict(converted.named_parameters())} == set(mhc_params(converted))


@pytest.mark.parametrize("entry, mode", cases("checkpoint"))
def test_load_original_checkpoint(entry, mode):
    trained = perturb_(entry.make())
    converted = convert_as(entry.make(), mode)
    result = converted.load_state_dict(trained.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith("mhc.") for k in result.missing_keys), result.missing_keys
    reference = convert_as(trained, mode)
    for model in (trained, converted, reference):
        model.eval()
    with torch.no_grad():
        got = call(converted, entry)
        assert_close_outputs(got, call(reference, entry))
        if mode in EXACT_MODES:
            assert_close_outputs(got, call(trained, entry))


def _nudge_(model: nn.Module) -> bool:
    """Move the oldest logit of every site (a constant shift would not change a projection)."""
    params = mhc_params(model)
    with torch.no_grad():
        for p in params.values():
            p[0] += 2.0
    return bool(params)


@pytest.mark.parametrize("entry, mode", cases("deepcopy"))
def test_deepcopy(entry, mode):
    converted = convert_as(entry.make(), mode).eval()
    twin = copy.deepcopy(converted)
    assert mhc_fx.is_converted(twin)
    assert len(mhc_fx.explain(twin).sites) == len(mhc_fx.explain(converted).sites)
    with torch.no_grad():
        base = call(converted, entry)
        assert_close_outputs(call(twin, entry), base)
        if not _nudge_(twin):
            return
        moved = call(twin, entry)
        assert_close_outputs(call(converted, entry), base)  # the original's output is unchanged
        diff = max((a - b).abs().max().item() for a, b in zip(float_outputs(moved), float_outputs(base)))
        assert diff > 1e-5, "the copy does not respond to its own mixing weights"
        # and the other way round: the original's weights move, the copy's output does not
        _nudge_(converted)
        assert_close_outputs(call(twin, entry), moved)


# -----------------------------------------------------------------------------
# the original is not mutated
# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry, mode", cases("untouched"))
def test_original_not_mutated(entry, mode):
    original = entry.make()
    original.eval()
    with torch.no_grad():
        reference = call(original, entry)
    original.train()
    state, training = snapshot(original), [m.training for m in original.modules()]
    mhc_fx.explain(original)
    assert_untouched(original, state, entry, training=training)
    converted = convert_as(original, mode)
    # use the converted model: train step on every parameter
    converted.train()
    loss_of(call(converted, entry)).backward()
    torch.optim.SGD(converted.parameters(), lr=0.1).step()
    assert_untouched(original, state, entry, output=reference, training=training)
    assert all(p.grad is None for p in original.parameters())


@pytest.mark.parametrize(
    "entry",
    [pytest.param(e, id=e.name) for e in ALL],
)
def test_convert_leaves_global_rng(entry):
    model = entry.make()
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(5)
    mhc_fx.convert(model)
    mhc_fx.explain(model)
    assert torch.equal(torch.rand(4), want), "convert/explain consumed the global torch RNG"


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_inplace_add_on_aliased_stream_is_skipped_and_exact(mode):
    # `skip = h; h += f(h)`: converting the in-place add would hand `skip` the old value,
    # so it is skipped with its reason, and the model stays exact.
    original = _seeded(AliasedInplace)()
    report = mhc_fx.explain(original)
    assert len(report.sites) == 1
    assert any("in-place add on a value that another name reads later" in s.reason for s in report.skipped)
    converted = convert_as(original, mode)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        assert_close_outputs(converted(x), original(x))


# -----------------------------------------------------------------------------
# bad input
# -----------------------------------------------------------------------------
BAD = [
    pytest.param({"mode": "mhcc"}, ValueError, "mode", id="unknown-mode"),
    pytest.param({"mode": None}, ValueError, "mode", id="mode-None"),
    pytest.param({"max_history": 0}, ValueError, "max_history", id="max_history-0"),
    pytest.param({"max_history": -3}, ValueError, "max_history", id="max_history-neg"),
    pytest.param({"max_history": 2.5}, TypeError, "max_history", id="max_history-float"),
    pytest.param({"epsilon": 1.0}, ValueError, "epsilon", id="epsilon-1"),
    pytest.param({"epsilon": -0.01}, ValueError, "epsilon", id="epsilon-neg"),
    pytest.param({"epsilon": float("nan")}, ValueError, "epsilon", id="epsilon-nan"),
    pytest.param({"temperature": 0.0}, ValueError, "temperature", id="temperature-0"),
    pytest.param({"temperature": -1.0}, ValueError, "temperature", id="temperature-neg"),
    pytest.param({"constraint": "sphere"}, ValueError, "constraint", id="constraint"),
    pytest.param({"include": "nothing.here"}, ValueError, "include", id="include-nomatch"),
    pytest.param({"include": nn.Conv3d}, ValueError, "include", id="include-class-nomatch"),
    pytest.param({"exclude": "blocks.9"}, ValueError, "exclude", id="exclude-nomatch"),
    pytest.param({"include": 3}, TypeError, "include", id="include-type"),
    pytest.param({"exclude": 2.5}, TypeError, "exclude", id="exclude-type"),
    pytest.param({"include": [nn.Linear, 3]}, TypeError, "include", id="include-list-item-type"),
    pytest.param({"inplace": "yes"}, TypeError, "inplace", id="inplace-type"),
]


def _bad_models():
    out = [pytest.param(BY_NAME["gpt"], id="gpt")]
    if HF_ZOO:
        out.append(pytest.param(HF_ZOO[0], id="hf_gpt2"))
    return out


@pytest.mark.parametrize("entry", _bad_models())
@pytest.mark.parametrize("options, error, match", BAD)
def test_bad_options(entry, options, error, match):
    original = entry.make()
    original.eval()
    with torch.no_grad():
        reference = call(original, entry)
    state, training = snapshot(original), [m.training for m in original.modules()]
    with pytest.raises(error, match=match):
        mhc_fx.convert(original, **options)
    assert_untouched(original, state, entry, output=reference, training=training)


@pytest.mark.parametrize("value", ["a string", None, 3, torch.zeros(2), [nn.Linear(2, 2)]])
def test_non_module_rejected(value):
    with pytest.raises(TypeError, match="model"):
        mhc_fx.convert(value)
    with pytest.raises(TypeError, match="model"):
        mhc_fx.explain(value)


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(8, 8)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor's value: no single graph
            x = x + self.f(x)
        return x + self.f(x)


def test_data_dependent_control_flow_is_a_clear_error():
    with pytest.raises(ValueError, match=r"torch.fx cannot trace _DataDependent .*example_inputs"):
        mhc_fx.convert(_DataDependent())
    with pytest.raises(ValueError, match=r"torch.export could not capture _DataDependent .*control flow on tensor"):
        mhc_fx.convert(_DataDependent(), example_inputs=(torch.randn(2, 8),))


def test_converting_converted_model_rejected():
    entry = BY_NAME["gpt"]
    converted = mhc_fx.convert(entry.make()).eval()
    with torch.no_grad():
        reference = call(converted, entry)
    state = snapshot(converted)
    report = mhc_fx.explain(converted)
    with pytest.raises(ValueError, match="converted by mhc_fx already"):
        mhc_fx.convert(converted)
    with pytest.raises(ValueError, match="converted by mhc_fx already"):
        mhc_fx.convert(converted, inplace=True)
    assert mhc_fx.explain(converted) is report
    assert snapshot(converted).keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in snapshot(converted).items())
    with torch.no_grad():
        assert_close_outputs(call(converted, entry), reference)


def test_inject_mhc_bad_target():
    model = GPT(layers=2, dim=16)
    state = snapshot(model)
    with pytest.raises(ValueError, match="target_class_name"):
        mhc_fx.inject_mhc(model, target_class_name="NoSuchBlock")
    with pytest.raises(TypeError, match="target_class_name"):
        mhc_fx.inject_mhc(model, target_class_name=Block)
    assert_untouched(model, state, BY_NAME["gpt"])


# -----------------------------------------------------------------------------
# include / exclude / inject_mhc
# -----------------------------------------------------------------------------
def _gpt():
    return BY_NAME["gpt"].make()


def _site_names(model):
    return [s.name for s in mhc_fx.explain(model).sites]


def test_include_one_block():
    original = _gpt()
    converted = mhc_fx.convert(original, include="blocks.0")
    assert _site_names(converted) == ["blocks.0.site0", "blocks.0.site1"]
    assert set(mhc_params(converted)) == {"mhc.blocks.0.site1"}
    report = mhc_fx.explain(converted)
    out_of_scope = [s for s in report.skipped if "scope" in s.reason]
    assert len(out_of_scope) == 6
    # the explain of the original with the same scope says the same
    assert [s.name for s in mhc_fx.explain(original, include="blocks.0").sites] == _site_names(converted)
    entry = BY_NAME["gpt"]
    original.eval()
    converted.eval()
    with torch.no_grad():
        assert_close_outputs(call(converted, entry), call(original, entry))
    # only the scoped block's forward is replaced (its ancestors open the scope)
    assert "forward" in converted.blocks[0].__dict__
    assert all("forward" not in converted.blocks[i].__dict__ for i in (1, 2, 3))


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"include": "blocks.*"}, 8),
        ({"include": Block}, 8),
        ({"include": ["blocks.1", "blocks.3"]}, 4),
        ({"exclude": Block}, 0),
        ({"exclude": "blocks.3"}, 6),
        ({"include": "blocks.*", "exclude": ["blocks.0", "blocks.1"]}, 4),
    ],
    ids=["glob", "class", "list", "exclude-class", "exclude-one", "include-exclude"],
)
def test_scope(options, expected):
    converted = mhc_fx.convert(_gpt(), **options)
    assert len(mhc_fx.explain(converted).sites) == expected


def test_inject_mhc_block_class():
    entry = BY_NAME["gpt"]
    reference = entry.make().eval()
    model = entry.make()
    result = mhc_fx.inject_mhc(model, target_class_name="Block")
    assert result is model and mhc_fx.is_converted(model)
    assert len(mhc_fx.explain(model).sites) == 8
    assert len(mhc_params(model)) == 7  # every site but the chain's first (K = 1)
    model.eval()
    with torch.no_grad():
        assert_close_outputs(call(model, entry), call(reference, entry))


@pytest.mark.skipif(not HF_ZOO, reason="transformers not installed")
def test_inject_mhc_hf_block_class():
    entry = HF_ZOO[0]
    reference = entry.make().eval()
    model = entry.make()
    assert mhc_fx.inject_mhc(model, target_class_name="GPT2Block") is model
    assert len(mhc_fx.explain(model).sites) == entry.sites
    model.eval()
    with torch.no_grad():
        assert_close_outputs(call(model, entry), call(reference, entry))


@pytest.mark.skipif(not HF_ZOO, reason="transformers not installed")
@pytest.mark.parametrize("entry", [pytest.param(e, id=e.name) for e in HF_ZOO])
def test_hf_scope_by_block_class(entry):
    assert len(mhc_fx.explain(mhc_fx.convert(entry.make(), exclude=entry.block_class)).sites) == 0
    assert len(mhc_fx.explain(mhc_fx.convert(entry.make(), include=entry.block_class)).sites) == entry.sites


class _IaddConvNeXtBlock(ConvNeXtBlock):
    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        x += (self.gamma * h).permute(0, 3, 1, 2)
        return x


@pytest.mark.parametrize("inplace_form", [False, True], ids=["add", "iadd"])
def test_branch_layout_does_not_leak_into_the_stream(inplace_form):
    # ConvNeXt's branch ends in a permute: the site must return the layout `x + branch`
    # (or `x += branch`) has, or the next depthwise conv runs another algorithm and the
    # model is no longer exact at init
    entry = BY_NAME["convnext"]
    original = entry.make().eval()
    if inplace_form:
        for block in original.blocks:
            block.__class__ = _IaddConvNeXtBlock
    converted = mhc_fx.convert(original).eval()
    assert len(mhc_fx.explain(converted).sites) == 3
    strides = {}
    for tag, model in (("original", original), ("converted", converted)):
        for i, block in enumerate(model.blocks):
            block.register_forward_hook(lambda m, i_, out, key=(tag, i): strides.__setitem__(key, out.stride()))
    (x,) = entry.example_inputs()
    with torch.no_grad():
        want, got = original(x), converted(x)
    assert torch.equal(got, want)
    assert all(strides[("converted", i)] == strides[("original", i)] for i in range(len(original.blocks))), strides
