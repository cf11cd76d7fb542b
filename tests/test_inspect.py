"""`mhc_fx.inspect`: the α heat map, the before/after view, state contributions, gradient flow, the logger.

Numbers are checked against a hand-written re-implementation of a tiny converted model (three
``x = x + f(x)`` steps in one loop, mode ``hc`` so every α entry is non-zero).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import mhc_fx
from mhc_fx.demo.model import GPT
from mhc_fx.transform.source import add_locations, count_adds
from tests.helpers import perturb_mixing
from tests.models.zoo import MixedForms, ResNetCNN

pytest.importorskip("matplotlib")


class Loop(nn.Module):
    """Three sites in one chain, all at one add of the root's forward (occurrences 0, 1, 2)."""

    def __init__(self, dim: int = 5) -> None:
        super().__init__()
        self.fs = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.fs:
            x = x + torch.tanh(f(x))
        return x


def tiny(**options) -> nn.Module:
    torch.manual_seed(0)
    model = mhc_fx.convert(Loop(), mode="hc", max_history=2, **options)
    return perturb_mixing(model, scale=0.7)


def by_hand(model: nn.Module, x: torch.Tensor, detach: bool = False):
    """Site outputs, the states each site mixed and the α it used, recomputed from the parameters."""
    thetas = {"site1": model.mhc.site1, "site2": model.mhc.site2}
    streams, outputs, windows, alphas = [x], [], [], []
    for i, f in enumerate(model.fs):
        window = streams[-min(i + 1, 2) :]
        alpha = torch.softmax(thetas[f"site{i}"], -1) if i else torch.ones(1)
        mixed = [s.detach() if detach and k < len(window) - 1 else s for k, s in enumerate(window)]
        y = torch.tanh(f(streams[-1])) + sum(a * s for a, s in zip(alpha, mixed))
        streams.append(y)
        outputs.append(y)
        windows.append(window)
        alphas.append(alpha)
    return outputs, windows, alphas, thetas


def cells(fig) -> np.ma.MaskedArray:
    return fig.axes[0].images[0].get_array()


# -- plot_weights ------------------------------------------------------------------------------------------------
def test_plot_weights_is_the_site_by_offset_grid_of_mixing_weights():
    model = perturb_mixing(mhc_fx.convert(GPT(layers=2, dim=16), mode="hc", max_history=3))
    fig = mhc_fx.plot_weights(model)
    from matplotlib.figure import Figure

    assert isinstance(fig, Figure)
    alphas = mhc_fx.mixing_weights(model)
    grid = cells(fig)
    assert grid.shape == (len(alphas), 3)  # rows: sites in execution order; columns: offsets t-2, t-1, t
    for row, alpha in zip(grid, alphas.values()):
        k = len(alpha)
        assert row.mask[: 3 - k].all() and not row.mask[3 - k :].any()  # blank where K is smaller
        np.testing.assert_allclose(row[3 - k :].data, alpha.numpy(), rtol=0, atol=0)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == list(alphas)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["t-2", "t-1", "t"]


def test_plot_weights_draws_on_a_given_axes_and_accepts_a_compiled_model():
    import matplotlib.pyplot as plt

    model = mhc_fx.convert(GPT(layers=1, dim=16), max_history=2)
    fig, ax = plt.subplots()
    try:
        assert mhc_fx.plot_weights(torch.compile(model), ax=ax) is fig  # compile is lazy: nothing compiles here
        assert ax.images[0].get_array().shape == (2, 2)
    finally:
        plt.close(fig)


def test_plots_refuse_an_unconverted_model_and_an_empty_one():
    with pytest.raises(ValueError, match="mhc_fx.convert"):
        mhc_fx.plot_weights(GPT(layers=1, dim=16))
    empty = mhc_fx.convert(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(ValueError, match="no residual site"):
        mhc_fx.plot_weights(empty)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    model = mhc_fx.convert(GPT(layers=1, dim=16))
    import matplotlib.pyplot  # noqa: F401  (cached submodules must not hide the blocked package)

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for plot in (
        lambda: mhc_fx.plot_weights(model),
        lambda: mhc_fx.plot_contributions({"site0": [1.0]}),
        lambda: mhc_fx.plot_gradient_flow({"site0": {"logits": 1.0, "output": None, "states": None}}),
    ):
        with pytest.raises(ImportError, match=r'pip install "mhc_fx\[plot\]"'):
            plot()


def test_importing_mhc_fx_does_not_import_matplotlib():
    code = "import sys, mhc_fx; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# -- show_rewrite ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: GPT(layers=2, dim=16), MixedForms, ResNetCNN], ids=["gpt", "forms", "resnet"])
def test_show_rewrite_marks_every_site_and_every_skipped_add(make):
    model = mhc_fx.convert(make(), max_history=3)
    report = mhc_fx.explain(model)
    view = mhc_fx.show_rewrite(model)
    text, page = str(view), view._repr_html_()
    assert report.sites and report.skipped
    for site in report.sites:
        assert f"→ {site.name}  chain {site.chain}, pos {site.position}, K={site.history}" in text
        assert site.name in page
    for skipped in report.skipped:
        assert f"not a site: {skipped.reason}" in text
    assert repr(view) == text and page.startswith("<pre")


def test_show_rewrite_marks_the_lines_of_the_adds():
    model = mhc_fx.convert(MixedForms())
    lines = str(mhc_fx.show_rewrite(model)).splitlines()
    marked = [line.split("→", 1)[1].strip() for line in lines if line[:5].strip().isdigit() and line[6] == "→"]
    assert marked == [
        "h = h + self.f1(h)  # site 1: x + f(x)",
        "h = self.f2(h) + h  # site 2: f(x) + x",
        "h = torch.add(h, self.f3(h))  # site 3: torch.add(x, f(x))",
        "h += self.f4(torch.relu(h))",
    ]
    kept = [line for line in lines if line[:5].strip().isdigit() and line[6] == "·"]
    assert len(kept) == 2 and "self.bias" in kept[0] and "0.044715" in kept[1]


def test_add_locations_numbers_adds_like_the_rewrite():
    def forward(self, x):
        y = (x + self.f(x)) + self.g(x)  # inner add first: the rewrite numbers in post-order
        y += torch.add(y, x)
        return y

    locs = add_locations(forward)
    assert [loc for loc, *_ in locs] == list(range(count_adds(forward))) == [0, 1, 2, 3]
    assert [text for *_, text in locs] == [
        "x + self.f(x)",
        "(x + self.f(x)) + self.g(x)",
        "torch.add(y, x)",
        "y += torch.add(y, x)",
    ]
    first = forward.__code__.co_firstlineno
    assert [lineno - first for _, lineno, _, _ in locs] == [1, 1, 2, 2]
    assert locs[0][2] == 13 and locs[3][2] == 8  # character columns in the file


# -- history_contributions / gradient_flow -----------------------------------------------------------------------
def test_history_contributions_equal_a_hand_computation():
    model = tiny()
    model.train()
    x = torch.randn(4, 5)
    got = mhc_fx.history_contributions(model, x)
    with torch.no_grad():
        _, windows, alphas, _ = by_hand(model, x)
    assert list(got) == ["site0", "site1", "site2"]
    for (name, values), window, alpha in zip(got.items(), windows, alphas):
        expected = [float((a * s).norm()) for a, s in zip(alpha, window)]
        np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert model.training and all(m.training for m in model.modules())  # the mode is restored
    assert "_mix_site" not in vars(model.__dict__["_mhc_fx_runtime"])  # the recording hook is gone


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_flow_equals_a_hand_computation(detach):
    model = tiny(detach_history=detach)
    x = torch.randn(4, 5)
    flow = mhc_fx.gradient_flow(model, x, loss_fn=lambda out: out.square().mean())
    outputs, _, alphas, thetas = by_hand(model, x, detach=detach)
    loss = outputs[-1].square().mean()
    g_out = torch.autograd.grad(loss, outputs, retain_graph=True)
    g_theta = torch.autograd.grad(loss, list(thetas.values()))
    assert flow["site0"]["logits"] is None
    for i, name in enumerate(["site0", "site1", "site2"]):
        assert flow[name]["output"] == pytest.approx(float(g_out[i].norm()), rel=1e-5)
        states = [float(a) * float(g_out[i].norm()) for a in alphas[i].detach()]
        if detach:
            states[:-1] = [0.0] * (len(states) - 1)
        np.testing.assert_allclose(flow[name]["states"], states, rtol=1e-5)
    for name, g in zip(["site1", "site2"], g_theta):
        assert flow[name]["logits"] == pytest.approx(float(g.norm()), rel=1e-5)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: no .grad touched


def test_gradient_flow_without_inputs_reads_the_last_backward():
    model = tiny()
    model(torch.randn(4, 5)).mean().backward()
    flow = mhc_fx.gradient_flow(model)
    assert flow["site0"] == {"logits": None, "output": None, "states": None}
    assert flow["site2"]["logits"] == pytest.approx(float(model.mhc.site2.grad.norm()))


def test_gradient_flow_default_loss_and_plots():
    model = tiny()
    x = torch.randn(4, 5)
    flow = mhc_fx.gradient_flow(model, x)  # default: output.mean()
    outputs, *_ = by_hand(model, x)
    (g,) = torch.autograd.grad(outputs[-1].mean(), [outputs[-1]])
    assert flow["site2"]["output"] == pytest.approx(float(g.norm()))
    fig = mhc_fx.plot_gradient_flow(flow)
    assert [b.get_height() for b in fig.axes[0].patches] == pytest.approx(
        [0.0, flow["site1"]["logits"], flow["site2"]["logits"]]
    )
    contributions = mhc_fx.history_contributions(model, x)
    grid = cells(mhc_fx.plot_contributions(contributions))
    assert grid.shape == (3, 2) and grid.mask[0, 0] and grid[2, 1] == pytest.approx(contributions["site2"][1])


# -- WeightLogger ------------------------------------------------------------------------------------------------
def test_weight_logger_records_alpha_and_its_entropy():
    model = tiny()
    logger = mhc_fx.WeightLogger(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        model(torch.randn(4, 5)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        logger.step()
    assert [r["step"] for r in logger.history] == [0, 1, 2]
    assert logger.history[0]["alpha"]["site2"] != logger.history[-1]["alpha"]["site2"]  # the weights moved
    for record in logger.history:
        for name, alpha in record["alpha"].items():
            assert record["entropy"][name] == pytest.approx(-sum(a * math.log(a) for a in alpha), abs=1e-12)
    last = mhc_fx.mixing_weights(model)
    assert logger.history[-1]["alpha"] == {n: a.tolist() for n, a in last.items()}
    rows = logger.to_rows()
    assert len(rows) == 9 and set(rows[-1]) == {"step", "site", "entropy", "alpha[t]", "alpha[t-1]"}
    assert rows[-1]["alpha[t]"] == last["site2"][-1].item() and rows[-1]["alpha[t-1]"] == last["site2"][0].item()
    for value in ("entropy", "latest"):
        lines = logger.plot_history(value=value).axes[0].get_lines()
        assert len(lines) == 3 and list(lines[0].get_xdata()) == [0, 1, 2]


def test_weight_logger_steps_every_and_entropy_of_sparse_alpha():
    model = mhc_fx.convert(GPT(layers=1, dim=16), max_history=2)  # mhc at init: alpha = e_last, exact zeros
    logger = mhc_fx.WeightLogger(model, every=2)
    records = [logger.step(step=10 * i) for i in range(5)]
    assert [r is None for r in records] == [False, True, False, True, False]
    assert [r["step"] for r in logger.history] == [0, 20, 40]
    assert logger.history[0]["entropy"] == {"blocks.0.site0": 0.0, "blocks.0.site1": 0.0}  # 0 log 0 = 0
    with pytest.raises(ValueError, match="every"):
        mhc_fx.WeightLogger(model, every=0)
    with pytest.raises(ValueError, match="nothing to plot"):
        mhc_fx.WeightLogger(model).plot_history()
    with pytest.raises(ValueError, match="value"):
        logger.plot_history(value="alpha")
