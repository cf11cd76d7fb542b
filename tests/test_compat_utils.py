"""`mhc_fx.compat.utils`: injection with the package's meaning (history inside one call), the
plots, the Lightning callback (with a stand-in Lightning), `mhc_compatible` and `get_logger`."""

from __future__ import annotations

import logging
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mhc_fx
from mhc_fx import compat
from mhc_fx.compat.utils import injection, lightning_callback, visualization
from tests.test_compat_config import fresh_compat_state  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.usefixtures("fresh_compat_state"),
    pytest.mark.filterwarnings("ignore::mhc_fx.compat.CompatWarning"),  # asserted where they matter
]


def _mlp(widths=(4, 4, 4)):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], widths[2]))


def test_inject_wraps_targets_recursively_like_the_package():
    model = _mlp((10, 10, 10))
    assert compat.inject_mhc(model, target_types=nn.Linear, max_history=2) is model
    assert isinstance(model[0], compat.utils.InjectedMHC) and isinstance(model[2], compat.utils.InjectedMHC)
    assert model[0].skip.max_history == 2 and model(torch.randn(2, 10)).shape == (2, 10)
    deep = nn.Module()
    deep.net, deep.head = nn.Sequential(nn.Linear(5, 5)), nn.Linear(5, 2)
    compat.inject_mhc(deep, nn.Linear)
    assert isinstance(deep.net[0], injection.InjectedMHC) and isinstance(deep.head, injection.InjectedMHC)
    common = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4), nn.Conv2d(1, 1, 1))
    compat.inject_mhc_default(common, max_history=2)
    assert all(isinstance(m, injection.InjectedMHC) for m in common)
    shrinking = compat.inject_mhc(_mlp((10, 8, 8)), nn.Linear, max_history=3)  # a shape change restarts
    assert shrinking(torch.randn(4, 10)).shape == (4, 8)


def test_module_scope_adds_a_skip_around_each_target():
    model = _mlp()
    lin1, lin2 = model[0], model[2]
    x = torch.randn(3, 4)
    compat.inject_mhc(model, nn.Linear, history_scope="module")
    assert model[0].history_buffer is not model[2].history_buffer
    r = torch.relu(lin1(x) + x)
    torch.testing.assert_close(model(x), lin2(r) + r)


@pytest.mark.parametrize("init", ["identity", "uniform"])
def test_global_scope_shares_one_history_across_targets(init):
    model = _mlp()
    lin1, lin2 = model[0], model[2]
    x = torch.randn(3, 4)
    compat.inject_mhc(model, nn.Linear, history_scope="global", init=init)
    assert model[0].history_buffer is model[2].history_buffer
    out1 = lin1(x) + x
    mixed = out1 if init == "identity" else (x + out1) / 2
    torch.testing.assert_close(model(x), lin2(torch.relu(out1)) + mixed)


def test_history_never_outlives_a_call():
    model = compat.inject_mhc(_mlp(), nn.Linear, history_scope="global", init="uniform")
    x = torch.randn(3, 4)
    first = model(x)
    assert len(model[0].history_buffer) == 0 and torch.equal(model(x), first)
    alone = model[0](x)  # a wrapper called on its own brackets its own call
    assert torch.equal(alone, model[0].base_module(x) + x) and len(model[0].history_buffer) == 0
    model.clear_mhc_history()
    with pytest.raises(RuntimeError):
        model(torch.randn(3, 5))  # the failing call still empties the buffer
    assert len(model[0].history_buffer) == 0
    with pytest.warns(compat.CompatWarning, match="clear_on_forward=False"):
        kept = compat.inject_mhc(_mlp(), nn.Linear, clear_on_forward=False)
    assert torch.equal(kept(x), kept(x))


def test_a_module_called_twice_in_one_call_sees_its_first_call():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x))

    model = Tied()
    lin = model.lin
    compat.inject_mhc(model, nn.Linear, init="uniform")
    x = torch.randn(2, 4)
    a = lin(x) + x
    torch.testing.assert_close(model(x), lin(a) + (x + a) / 2)


def test_inject_options_and_targets():
    with pytest.warns(compat.CompatWarning, match="adds skip connections"):
        model = compat.inject_mhc(_mlp(), nn.Linear, mode="hc", constraint="simplex", temperature=2.0)
    assert model[0].skip.mode == "hc" and model[0].skip.temperature == 2.0
    assert model[0].skip.config.detach_history  # the default config's True
    with pytest.warns(compat.CompatWarning, match="detaches the older states only"):
        compat.inject_mhc(_mlp(), nn.Linear, detach_history=True)
    by_name = compat.inject_mhc(_mlp(), target_class_name="Linear")
    assert isinstance(by_name[2], injection.InjectedMHC) and not isinstance(by_name[1], injection.InjectedMHC)
    with pytest.raises(ValueError, match="no submodule"):
        compat.inject_mhc(by_name, nn.Linear)  # wrapped modules are not wrapped again
    assert isinstance(by_name[0].base_module, nn.Linear)

    @compat.mhc_compatible
    class Marked(nn.Linear):
        pass

    mixed = compat.inject_mhc(nn.Sequential(Marked(4, 4), nn.Linear(4, 4)), nn.Linear)
    assert isinstance(mixed[0], Marked) and isinstance(mixed[1], injection.InjectedMHC)
    for bad, error in (("Linear", TypeError), (None, TypeError), ([int], TypeError)):
        with pytest.raises(error, match="target_types|target_class_name"):
            compat.inject_mhc(_mlp(), bad)
    with pytest.raises(ValueError, match="history_scope must be one of"):
        compat.inject_mhc(_mlp(), nn.Linear, history_scope="layer")
    with pytest.raises(TypeError, match="history_buffer"):
        injection.InjectedMHC(nn.Linear(2, 2), [])


def test_mhc_compatible_and_get_logger():
    @compat.utils.mhc_compatible
    class Block(nn.Module):
        pass

    assert Block()._mhc_compatible is True
    with pytest.raises(TypeError, match="nn.Module subclass"):
        compat.mhc_compatible(object)
    assert compat.utils.get_logger() is logging.getLogger("mhc")
    assert compat.utils.get_logger("mhc.x").name == "mhc.x"


def test_extract_mixing_weights():
    seq = compat.MHCSequential([nn.Linear(4, 4)] * 3, max_history=3, stochastic=True)
    seq.append_residual = compat.MHCSkip(mode="residual")
    weights = visualization.extract_mixing_weights(seq)  # in training mode: still deterministic
    assert list(weights) == ["skip_layers.0", "skip_layers.1", "skip_layers.2"]
    assert all(torch.equal(a, torch.tensor([0.0, 0.0, 1.0])) for a in weights.values())

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            x = x + self.a(x)
            return x + self.b(x)

    converted = mhc_fx.convert(Residual(), mode="mhc")
    assert set(visualization.extract_mixing_weights(converted)) == set(mhc_fx.mixing_weights(converted))


def test_plot_mixing_weights(tmp_path):
    seq = compat.MHCSequential([nn.Linear(4, 4)] * 3, max_history=3, constraint="identity")
    with torch.no_grad():
        seq.skip_layers[1].mixing_logits.copy_(torch.tensor([0.5, 0.2, 0.9]))
    path = tmp_path / "weights.png"
    fig = compat.utils.plot_mixing_weights(seq, save_path=str(path), figsize=(3, 2))
    assert path.stat().st_size > 0
    image = fig.axes[0].images[0].get_array()
    want = np.stack([a.numpy() for a in visualization.extract_mixing_weights(seq).values()])
    np.testing.assert_allclose(image, want, rtol=1e-6)
    with pytest.raises(ValueError, match="no MHCSkip"):
        compat.utils.plot_mixing_weights(nn.Linear(2, 2))


def test_plot_gradient_flow_restores_the_mode():
    model = compat.MHCSequential([nn.Linear(4, 4), nn.Linear(4, 4)]).eval()
    fig = compat.utils.plot_gradient_flow(model, torch.randn(3, 4), torch.randn(3, 4), nn.MSELoss())
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    assert heights == pytest.approx([float(p.grad.norm()) for p in model.parameters()])
    assert not model.training
    assert len(compat.utils.plot_gradient_flow(model, torch.randn(3, 4)).axes[0].patches) == len(heights)


def test_plot_history_contribution_and_dashboard():
    alphas = torch.tensor([0.1, 0.2, 0.7])
    fig = compat.utils.plot_history_contribution(alphas, layer_name="skip_layers.0")
    ax = fig.axes[0]
    assert [b.get_height() for b in ax.patches] == pytest.approx(alphas.tolist())
    assert [t.get_text() for t in ax.texts] == ["10.0%", "20.0%", "70.0%"] and "skip_layers.0" in ax.get_title()
    with pytest.raises(ValueError, match="1-D"):
        compat.utils.plot_history_contribution(torch.ones(2, 2))
    metrics = {"loss": [1.0, 0.5], "accuracy": [10, 20], "mixing_weights_history": [[0.2, 0.8], [0.3, 0.7]]}
    board = compat.utils.create_training_dashboard(metrics)
    assert len(board.axes) == 3 and len(board.axes[2].lines) == 2
    assert len(compat.utils.create_training_dashboard({"loss": [1.0]}).axes) == 1
    with pytest.raises(ValueError, match="unknown keys"):
        compat.utils.create_training_dashboard({"lr": [1.0]})


def test_plots_name_the_extra_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"mhc_fx\[plot\]"):
        compat.utils.plot_history_contribution(torch.ones(2) / 2)


def test_lightning_callback_needs_lightning(monkeypatch):
    for name in ("lightning", "lightning.pytorch", "lightning.pytorch.callbacks", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning.callbacks", None)
    with pytest.raises(ImportError, match="pip install lightning"):
        lightning_callback.MHCLightningCallback  # noqa: B018
    with pytest.raises(ImportError, match="pip install lightning"):
        compat.utils.MHCLightningCallback  # noqa: B018


@pytest.fixture
def fake_lightning(monkeypatch):
    """A minimal stand-in for ``lightning.pytorch.callbacks.Callback`` (Lightning is not installed)."""

    class Callback:
        pass

    root = types.ModuleType("lightning")
    root.pytorch = types.ModuleType("lightning.pytorch")
    root.pytorch.callbacks = types.ModuleType("lightning.pytorch.callbacks")
    root.pytorch.callbacks.Callback = Callback
    for name, module in (("lightning", root), ("lightning.pytorch", root.pytorch)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "lightning.pytorch.callbacks", root.pytorch.callbacks)
    return Callback


def test_lightning_callback_logs_the_weights(fake_lightning):
    cls = lightning_callback.MHCLightningCallback
    assert issubclass(cls, fake_lightning) and cls is compat.utils.MHCLightningCallback and cls.__doc__
    callback = cls(log_interval=2, prefix="hc")

    class Module(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = compat.MHCSequential([nn.Linear(3, 3)] * 2, max_history=2)
            self.logged = {}

        def log(self, name, value, on_step):
            self.logged[name] = float(value)

    module = Module()
    callback.on_train_batch_start(None, module, None, 0)
    callback.on_validation_batch_start(None, module, None, 0)
    callback.on_test_batch_start(None, module, None, 0)
    callback.on_train_batch_end(None, module, None, None, 0)
    assert module.logged == {}  # not on this batch
    callback.on_train_batch_end(None, module, None, None, 1)
    assert module.logged == {
        "hc/net.skip_layers.0/alpha_latest": 1.0,
        "hc/net.skip_layers.0/entropy": 0.0,
        "hc/net.skip_layers.1/alpha_latest": 1.0,
        "hc/net.skip_layers.1/entropy": 0.0,
    }
    with pytest.raises(ValueError, match="log_interval"):
        cls(log_interval=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(log_mixing_weights=False).on_train_batch_end(None, module, None, None, 49)


def test_compat_models_compile_without_graph_breaks():
    torch.manual_seed(0)
    x = torch.randn(2, 4)
    models = [
        (compat.MHCSequential([nn.Linear(4, 4)] * 3, 3, use_gating=True, prune_threshold=0.1), x),
        (compat.inject_mhc(_mlp(), nn.Linear, history_scope="global", init="uniform"), x),
        (compat.MHCBasicBlock(4, 4).eval(), torch.randn(1, 4, 4, 4)),
    ]
    for model, inputs in models:
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)  # fullgraph: a break raises
        torch.testing.assert_close(compiled(inputs), model(inputs))
    assert len(models[1][0][0].history_buffer) == 0
