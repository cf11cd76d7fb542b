"""The seed-compatible layers `MHCSkip` and `MHCSequential`.

Besides the identity-at-init contract, each defect of the `mhc` package (0.5.x)
has a regression test here that checks *our* behaviour:
  (a) its default ``detach_history=True`` cuts the gradient to earlier layers;
  (b) history kept on the module leaks across forward calls and batches;
  (c) the history buffer is not moved by ``.to()`` and is missing from ``state_dict``;
  (d) a Python loop over the weights with a host sync each breaks ``torch.compile``;
  (e) activation checkpointing returns wrong gradients.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mhc_fx import MHCSequential, MHCSkip
from mhc_fx.projections import mixing_weights

WIDTH = 8


def make_blocks(n: int = 3, width: int = WIDTH, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n)]


def residual_forward(blocks, x):
    """The hand-written residual network x_{l+1} = f_l(x_l) + x_l."""
    for f in blocks:
        x = f(x) + x
    return x


def hand_mhc_forward(model: MHCSequential, x, *, detach_history: bool = False):
    """x_{l+1} = f_l(x_l) + sum_k alpha_{l,k} x_k over the last H states, written out."""
    history = [x]
    for f, skip in zip(model.wrapped_modules, model.skip_layers):
        window = history[-model.max_history :]
        alpha = mixing_weights(skip.mixing_logits[-len(window) :], skip.config, training=model.training)
        if detach_history:
            window = [s.detach() for s in window[:-1]] + window[-1:]
        y = f(history[-1])
        for k, s in enumerate(window):
            y = y + alpha[k] * s
        history.append(y)
    return history[-1]


def perturb_logits(model: nn.Module, seed: int = 1, low: float = 0.4, high: float = 0.9) -> None:
    """Move every site's logits off the identity into the interior (all entries in the support)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MHCSkip) and m.mixing_logits is not None:
                m.mixing_logits.copy_(low + (high - low) * torch.rand(m.mixing_logits.shape, generator=gen))


MHC_VARIANTS = [
    dict(mode="mhc"),
    dict(mode="mhc", constraint="identity", epsilon=0.05),
    dict(mode="mhc", constraint="identity", epsilon=0.3),
    dict(mode="mhc", temperature=0.7),
    dict(mode="mhc", constraint="identity", epsilon=0.3, temperature=1.3),
]


# --------------------------------------------------------------------------- identity at init


def test_residual_mode_equals_hand_written_residual_network():
    blocks = make_blocks(4)
    model = MHCSequential(blocks, mode="residual", max_history=3)
    x = torch.randn(5, WIDTH)
    assert torch.equal(model(x), residual_forward(blocks, x))
    assert [name for name, _ in model.named_parameters() if "mixing" in name] == []


@pytest.mark.parametrize("max_history", [1, 2, 4])
@pytest.mark.parametrize("options", MHC_VARIANTS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_mhc_equals_residual_exactly_at_init(options, max_history):
    blocks = make_blocks(5)
    model = MHCSequential(blocks, max_history=max_history, **options)
    x = torch.randn(4, WIDTH)
    assert torch.equal(model(x), residual_forward(blocks, x))
    model.eval()
    assert torch.equal(model(x), residual_forward(blocks, x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("options", MHC_VARIANTS[::2] + [dict(mode="mhc", temperature=0.7)])
def test_mhc_equals_residual_exactly_at_init_after_to_dtype(options, dtype):
    """The identity survives `.to(dtype)`, including temperatures not exact in float32."""
    blocks = make_blocks(3)
    model = MHCSequential(blocks, max_history=3, **options).to(dtype)
    x = torch.randn(4, WIDTH, dtype=dtype)
    out = model(x)
    assert out.dtype == dtype
    assert torch.equal(out, residual_forward(model.wrapped_modules, x))


@pytest.mark.parametrize("options", MHC_VARIANTS[:3], ids=["simplex", "identity-0.05", "identity-0.3"])
def test_default_gradients_reach_first_layer_and_input_and_equal_residual_at_init(options):
    blocks = make_blocks(4)
    model = MHCSequential(blocks, max_history=3, **options)
    reference = copy.deepcopy(blocks)
    x = torch.randn(4, WIDTH, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    target = torch.randn(4, WIDTH)

    ((model(x) - target) ** 2).sum().backward()
    ((residual_forward(reference, x_ref) - target) ** 2).sum().backward()

    first = model.wrapped_modules[0][0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(x.grad, x_ref.grad)
    for p, q in zip(model.wrapped_modules.parameters(), nn.ModuleList(reference).parameters()):
        assert torch.equal(p.grad, q.grad)
    # the mixing logits get a gradient too (identity init is not frozen)
    for skip in model.skip_layers[1:]:
        assert skip.mixing_logits.grad[-2] != 0


def test_identity_init_is_not_frozen_after_one_sgd_step():
    blocks = make_blocks(4)
    model = MHCSequential(blocks, max_history=4)
    x = torch.randn(16, WIDTH)
    before = model(x).detach()
    logits = [s.mixing_logits for s in model.skip_layers]
    optimizer = torch.optim.SGD(logits, lr=0.1)
    # rewards older states: the output should look like the network's input
    loss = -(model(x) * x).sum()
    loss.backward()
    for theta in logits[1:]:
        assert (theta.grad[-2:] != 0).all()
    optimizer.step()
    after = model(x).detach()
    assert not torch.equal(after, before)
    assert not torch.equal(after, residual_forward(blocks, x))
    alphas = [s.weights(min(i + 1, 4)) for i, s in enumerate(model.skip_layers)]
    assert any((a[:-1] > 0).any() for a in alphas[1:])
    # the loss went down along the step
    assert -(after * x).sum() < loss.detach()


@pytest.mark.parametrize("options", [dict(), dict(constraint="identity", epsilon=0.3), dict(mode="hc")])
def test_matches_hand_written_mhc_network_with_trained_logits(options):
    model = MHCSequential(make_blocks(5), max_history=3, **options)
    perturb_logits(model)
    x = torch.randn(4, WIDTH)
    torch.testing.assert_close(model(x), hand_mhc_forward(model, x), atol=1e-6, rtol=1e-6)


def test_max_history_one_is_residual_whatever_the_logits():
    blocks = make_blocks(3)
    model = MHCSequential(blocks, max_history=1)
    perturb_logits(model)
    x = torch.randn(4, WIDTH)
    assert torch.equal(model(x), residual_forward(blocks, x))


# --------------------------------------------------------------------------- (a) gradients through history


def test_a_default_keeps_gradients_through_older_states():
    # mhc 0.5.5: MHCConfig.detach_history defaults to True, so the input of an
    # MHCSequential only gets the gradient of the latest-state path.
    blocks = make_blocks(3)
    model = MHCSequential(blocks, max_history=4)
    detached = MHCSequential(copy.deepcopy(blocks), max_history=4, detach_history=True)
    assert model.skip_layers[0].config.detach_history is False
    perturb_logits(model)
    detached.load_state_dict(model.state_dict())

    x = torch.randn(4, WIDTH, requires_grad=True)
    x_det = x.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    x_ref_det = x.detach().clone().requires_grad_()
    target = torch.randn(4, WIDTH)
    ((model(x) - target) ** 2).sum().backward()
    ((detached(x_det) - target) ** 2).sum().backward()
    ((hand_mhc_forward(model, x_ref) - target) ** 2).sum().backward()
    ((hand_mhc_forward(model, x_ref_det, detach_history=True) - target) ** 2).sum().backward()

    # same forward, different input gradient: the older-state paths carry gradient
    torch.testing.assert_close(model(x), detached(x_det))
    assert not torch.allclose(x.grad, x_det.grad, atol=1e-4)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_det.grad, x_ref_det.grad, atol=1e-5, rtol=1e-5)
    # and the older-state part is what detach_history removes
    assert (x.grad - x_det.grad).abs().sum() > 1e-3


def test_a_input_gets_gradient_through_the_history_alone():
    """With zero branches (f = 0), the output is a mix of the input; its gradient is the
    product of the alphas, all through the history."""
    blocks = [nn.Linear(WIDTH, WIDTH) for _ in range(3)]
    for b in blocks:
        nn.init.zeros_(b.weight)
        nn.init.zeros_(b.bias)
    model = MHCSequential(blocks, max_history=4)
    perturb_logits(model)
    x = torch.randn(2, WIDTH, requires_grad=True)
    model(x).sum().backward()
    # x_1 = x, x_2 = x, x_3 = x (every alpha sums to 1): d sum(x_3)/dx = 1
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    detached = MHCSequential(blocks, max_history=4, detach_history=True)
    detached.load_state_dict(model.state_dict())
    x2 = x.detach().clone().requires_grad_()
    detached(x2).sum().backward()
    a = [s.weights(min(i + 1, 4)) for i, s in enumerate(detached.skip_layers)]
    # only the latest-state path is left: alpha_0[-1] * alpha_1[-1] * alpha_2[-1]
    expected = (a[0][-1] * a[1][-1] * a[2][-1]).detach()
    torch.testing.assert_close(x2.grad, torch.full_like(x2, expected.item()))
    assert expected < 0.9


# --------------------------------------------------------------------------- (b) no leaking history


@pytest.mark.parametrize("use_checkpointing", [False, True])
def test_b_history_does_not_leak_across_calls(use_checkpointing):
    model = MHCSequential(make_blocks(4), max_history=3, use_checkpointing=use_checkpointing)
    perturb_logits(model)
    fresh = copy.deepcopy(model)
    big, small = torch.randn(6, WIDTH), torch.randn(2, WIDTH)
    out_big = model(big)
    out_small = model(small)  # a different batch size right after: no stale state
    assert out_small.shape == (2, WIDTH)
    assert torch.equal(out_small, fresh(small))
    assert torch.equal(model(big), out_big)
    model.clear_history()  # kept for compatibility, a no-op
    assert torch.equal(model(small), out_small)
    # a sequence of different shapes through one MHCSkip
    skip = MHCSkip(max_history=2)
    perturb_logits(skip)
    a = skip(torch.ones(3), [torch.ones(3), torch.ones(3)])
    b = skip(torch.ones(5, 2), [torch.ones(5, 2), torch.ones(5, 2)])
    torch.testing.assert_close(a, torch.full((3,), 2.0))
    torch.testing.assert_close(b, torch.full((5, 2), 2.0))


# --------------------------------------------------------------------------- (c) no buffers


def _tensor_attributes(model: nn.Module) -> list[str]:
    """Tensors a module keeps outside its parameters and buffers (a history buffer would)."""
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr in ("_parameters", "_buffers", "_modules"):
                continue
            values = (
                list(value.values())
                if isinstance(value, dict)
                else value
                if isinstance(value, (list, tuple))
                else [value]
            )
            if any(isinstance(v, torch.Tensor) for v in values):
                found.append(f"{name}.{attr}")
    return found


def test_c_no_history_buffer_to_dtype_and_state_dict_holds_only_parameters():
    model = MHCSequential(make_blocks(3), max_history=2)
    keys = sorted(model.state_dict())
    expected = sorted(
        [f"wrapped_modules.{i}.0.{p}" for i in range(3) for p in ("weight", "bias")]
        + [f"skip_layers.{i}.mixing_logits" for i in range(3)]
    )
    assert keys == expected
    assert keys == sorted(name for name, _ in model.named_parameters())
    assert list(model.buffers()) == []

    x = torch.randn(3, WIDTH)
    assert _tensor_attributes(model) == []
    model(x).sum().backward()  # a forward pass adds no state
    assert sorted(model.state_dict()) == expected and list(model.buffers()) == []
    assert _tensor_attributes(model) == []

    model = model.to(torch.float64)
    out = model(x.double())
    assert out.dtype == torch.float64
    assert torch.equal(out, residual_forward(model.wrapped_modules, x.double()))
    assert all(t.dtype == torch.float64 for t in model.state_dict().values())

    residual = MHCSequential(make_blocks(2), mode="residual")
    assert sorted(residual.state_dict()) == sorted(
        f"wrapped_modules.{i}.0.{p}" for i in range(2) for p in ("weight", "bias")
    )


def test_c_state_dict_round_trip_restores_the_function():
    model = MHCSequential(make_blocks(3), max_history=3)
    perturb_logits(model)
    clone = MHCSequential(make_blocks(3, seed=5), max_history=3)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, WIDTH)
    assert torch.equal(clone(x), model(x))


# --------------------------------------------------------------------------- (d) torch.compile


@pytest.mark.parametrize(
    "options",
    [dict(), dict(constraint="identity", epsilon=0.1), dict(mode="hc"), dict(stochastic=True), dict(mode="residual")],
    ids=["mhc", "identity", "hc", "stochastic", "residual"],
)
def test_d_no_graph_break(options):
    torch._dynamo.reset()
    model = MHCSequential(make_blocks(4), max_history=3, **options)
    perturb_logits(model)
    explanation = torch._dynamo.explain(model)(torch.randn(2, WIDTH))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


def test_d_compiled_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = MHCSequential(make_blocks(4), max_history=3, constraint="identity", epsilon=0.1)
    perturb_logits(model)
    x = torch.randn(3, WIDTH, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    expected = model(x)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    params = [x, *model.parameters()]
    grads = torch.autograd.grad(out.square().sum(), params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- (e) checkpointing


def _all_grads(model, x, target):
    x = x.detach().clone().requires_grad_()
    ((model(x) - target) ** 2).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize(
    "options",
    [dict(), dict(constraint="identity", epsilon=0.2), dict(mode="hc", detach_history=True)],
    ids=["mhc", "identity", "hc-detach"],
)
def test_e_checkpointing_gives_the_same_gradients(options):
    plain = MHCSequential(make_blocks(4), max_history=3, **options)
    perturb_logits(plain)
    checkpointed = MHCSequential(
        copy.deepcopy(list(plain.wrapped_modules)), max_history=3, use_checkpointing=True, **options
    )
    checkpointed.load_state_dict(plain.state_dict())
    x, target = torch.randn(5, WIDTH), torch.randn(5, WIDTH)
    names = ["input"] + [n for n, _ in plain.named_parameters()]
    assert any("mixing_logits" in n for n in names)
    for name, g, h in zip(names, _all_grads(plain, x, target), _all_grads(checkpointed, x, target)):
        assert g is not None and h is not None, name
        torch.testing.assert_close(h, g, atol=1e-6, rtol=1e-6, msg=name)
        if "mixing_logits" in name and not name.startswith("skip_layers.0."):  # site 0 mixes 1 state
            assert g.abs().sum() > 0, name


def test_e_checkpointing_with_stochastic_mixing_replays_the_same_noise():
    plain = MHCSequential(make_blocks(3), max_history=3, stochastic=True)
    perturb_logits(plain)
    checkpointed = MHCSequential(
        copy.deepcopy(list(plain.wrapped_modules)), max_history=3, stochastic=True, use_checkpointing=True
    )
    checkpointed.load_state_dict(plain.state_dict())
    x, target = torch.randn(5, WIDTH), torch.randn(5, WIDTH)
    torch.manual_seed(11)
    g_plain = _all_grads(plain, x, target)
    torch.manual_seed(11)
    g_ckpt = _all_grads(checkpointed, x, target)
    for g, h in zip(g_plain, g_ckpt):
        torch.testing.assert_close(h, g, atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------- stochastic


def test_stochastic_is_seeded_and_eval_is_deterministic():
    model = MHCSequential(make_blocks(3), max_history=3, stochastic=True)
    perturb_logits(model)
    plain = MHCSequential(copy.deepcopy(list(model.wrapped_modules)), max_history=3)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, WIDTH)

    model.train()
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    b = model(x)
    torch.manual_seed(4)
    c = model(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)
    assert not torch.allclose(a, plain(x), atol=1e-4)

    model.eval()
    torch.manual_seed(5)
    d = model(x)
    torch.manual_seed(6)
    e = model(x)
    assert torch.equal(d, e)
    assert torch.equal(d, plain.eval()(x))
    assert torch.equal(d, plain.train()(x))  # the non-stochastic model ignores the mode


# --------------------------------------------------------------------------- MHCSkip


def test_skip_uses_the_last_max_history_states():
    skip = MHCSkip(max_history=2)
    perturb_logits(skip)
    x = torch.randn(3, 4)
    history = [torch.randn(3, 4) for _ in range(5)]
    alpha = mixing_weights(skip.mixing_logits, skip.config)
    expected = x + alpha[0] * history[-2] + alpha[1] * history[-1]
    torch.testing.assert_close(skip(x, history), expected)
    # shorter window: the last k logits
    skip3 = MHCSkip(max_history=3)
    perturb_logits(skip3)
    alpha = mixing_weights(skip3.mixing_logits[-2:], skip3.config)
    torch.testing.assert_close(skip3(x, history[:2]), x + alpha[0] * history[0] + alpha[1] * history[1])
    assert torch.equal(skip3(x, []), x)
    with pytest.raises(TypeError, match="history"):
        skip3(x, torch.randn(2, 3, 4))


def test_skip_detach_history_cuts_only_older_states():
    skip = MHCSkip(max_history=3, detach_history=True)
    perturb_logits(skip)
    history = [torch.randn(2, 4, requires_grad=True) for _ in range(3)]
    skip(torch.randn(2, 4), history).sum().backward()
    assert history[0].grad is None and history[1].grad is None
    assert history[2].grad is not None and (history[2].grad != 0).all()
    assert skip.mixing_logits.grad is not None


# --------------------------------------------------------------------------- auto_project


def test_auto_project_linear_for_another_last_dim():
    skip = MHCSkip(max_history=3, auto_project=True)
    x = torch.randn(5, 8)
    older, latest = torch.randn(5, 4, requires_grad=True), torch.randn(5, 8)
    # at init: exactly x + latest
    assert torch.equal(skip(x, [older, latest]), x + latest)
    assert list(skip.projections.keys()) == ["4_to_8"]
    (projection,) = skip.projections.values()
    assert isinstance(projection.map, nn.Linear) and projection.map.weight.shape == (8, 4)
    perturb_logits(skip)
    alpha = mixing_weights(skip.mixing_logits[-2:], skip.config)
    out = skip(x, [older, latest])
    torch.testing.assert_close(out, x + alpha[0] * projection(older) + alpha[1] * latest)
    out.sum().backward()
    assert older.grad is not None and older.grad.abs().sum() > 0
    assert projection.map.weight.grad is not None
    assert len(skip.projections) == 1  # reused, not re-created


def test_auto_project_nchw_channels_and_downsampling():
    skip = MHCSkip(max_history=3, auto_project=True)
    x = torch.randn(2, 8, 4, 4)
    older = torch.randn(2, 4, 8, 8)
    latest = torch.randn(2, 8, 4, 4)
    assert torch.equal(skip(x, [older, latest]), x + latest)
    (projection,) = skip.projections.values()
    assert isinstance(projection.map, nn.Conv2d) and projection.map.kernel_size == (1, 1)
    perturb_logits(skip)
    alpha = mixing_weights(skip.mixing_logits[-2:], skip.config)
    expected_older = projection.map(nn.functional.avg_pool2d(older, 2))
    torch.testing.assert_close(skip(x, [older, latest]), x + alpha[0] * expected_older + alpha[1] * latest)


def test_auto_project_in_a_sequential_stage_change():
    stage = [
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 8, 3, padding=1, stride=2),  # channels x2, spatial / 2
        nn.Conv2d(8, 8, 3, padding=1),
    ]
    model = MHCSequential(stage, max_history=3, auto_project=True)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 8, 4, 4)
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    # older states of the old shape reach the new shape through a learned projection
    assert any(len(s.projections) for s in model.skip_layers)


def test_mismatched_history_without_auto_project_raises():
    skip = MHCSkip(max_history=3)
    with pytest.raises(ValueError, match=r"history\[0\].*auto_project"):
        skip(torch.randn(5, 8), [torch.randn(5, 4), torch.randn(5, 8)])
    model = MHCSequential([nn.Linear(8, 8), nn.Linear(8, 4)], max_history=3)
    with pytest.raises(ValueError, match="auto_project"):
        model(torch.randn(2, 8))
    with pytest.raises(ValueError, match="auto_project"):
        MHCSkip(auto_project=True)(torch.randn(2, 8, 4, 4), [torch.randn(2, 4, 6, 6)])


# --------------------------------------------------------------------------- bad arguments

BAD_ARGUMENTS = [
    (dict(mode="dense"), ValueError, r"mode.*residual.*hc.*mhc"),
    (dict(constraint="sphere"), ValueError, r"constraint.*simplex.*identity"),
    (dict(max_history=0), ValueError, "max_history"),
    (dict(max_history=-2), ValueError, "max_history"),
    (dict(max_history=2.5), TypeError, "max_history"),
    (dict(max_history="4"), TypeError, "max_history"),
    (dict(max_history=True), TypeError, "max_history"),
    (dict(epsilon=-0.1), ValueError, r"epsilon.*\[0, 1\)"),
    (dict(epsilon=1.0), ValueError, r"epsilon.*\[0, 1\)"),
    (dict(epsilon=float("nan")), ValueError, "epsilon"),
    (dict(epsilon="0.1"), TypeError, "epsilon"),
    (dict(temperature=0.0), ValueError, r"temperature.*> 0"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(mode="residual", stochastic=True), ValueError, "stochastic"),
    (dict(stochastic="yes"), TypeError, "stochastic"),
    (dict(detach_history=1), TypeError, "detach_history"),
    (dict(auto_project=None), TypeError, "auto_project"),
    (dict(use_gating=True), TypeError, "use_gating"),
    (dict(prune_threshold=0.01), TypeError, "prune_threshold"),
    (dict(history_scope="module"), TypeError, "history_scope"),
    (dict(clear_history_each_forward=True), TypeError, "clear_history_each_forward"),
    (dict(init="identity"), TypeError, "init"),
    (dict(not_an_option=1), TypeError, "not_an_option"),
]


@pytest.mark.parametrize(
    "kwargs,exc,match", BAD_ARGUMENTS, ids=[next(iter(a[0])) + str(i) for i, a in enumerate(BAD_ARGUMENTS)]
)
def test_bad_arguments_skip(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MHCSkip(**kwargs)


@pytest.mark.parametrize(
    "kwargs,exc,match", BAD_ARGUMENTS, ids=[next(iter(a[0])) + str(i) for i, a in enumerate(BAD_ARGUMENTS)]
)
def test_bad_arguments_sequential(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MHCSequential(make_blocks(2), **kwargs)


def test_bad_arguments_sequential_only():
    with pytest.raises(TypeError, match="use_checkpointing"):
        MHCSequential(make_blocks(2), use_checkpointing="yes")
    with pytest.raises(TypeError, match="single module"):
        MHCSequential(nn.Linear(3, 3))
    with pytest.raises(TypeError, match=r"modules\[1\]"):
        MHCSequential([nn.Linear(3, 3), lambda x: x])


def test_sequential_is_a_drop_in_container():
    blocks = make_blocks(3)
    model = MHCSequential(nn.Sequential(*blocks))
    assert len(model) == 3
    assert list(model) == blocks
    assert model[1] is blocks[1]
    assert [s.max_history for s in model.skip_layers] == [4, 4, 4]
    assert "mode='mhc'" in repr(model.skip_layers[0])
