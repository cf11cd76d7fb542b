"""The `mhc` package's documented examples (its README, tutorials, guides, feature pages and
examples/ scripts), with ``mhc`` replaced by ``mhc_fx.compat`` in the imports and nothing else
changed except sizes, step counts and file names where noted; each checks what the docs promise."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset

from mhc_fx.compat import MHCSequential, MHCSkip, get_preset, inject_mhc, set_seed
from tests.test_compat_config import fresh_compat_state  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.usefixtures("fresh_compat_state"),
    pytest.mark.filterwarnings("ignore::mhc_fx.compat.CompatWarning"),
]


def test_readme_thirty_second_example():
    def build():
        return MHCSequential(
            [nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)],
            max_history=4,
            mode="mhc",
            constraint="simplex",
        )

    x = torch.randn(8, 64)
    # As written it fails in the package too (its last layer changes the width): a clear error here.
    with pytest.raises(ValueError, match="auto_project=True"):
        build()(x)
    import mhc_fx.compat as mhc

    mhc.set_default_config(auto_project=True)  # the package's way to reach its skips
    model = build()
    output = model(x)
    assert output.shape == (8, 32) and torch.isfinite(output).all()
    output.sum().backward()
    assert all(p.grad is not None for p in model.wrapped_modules.parameters())


def test_quickstart_managed_sequential_is_the_resnet_at_init():
    layers = [nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU()] * 10  # a 40-layer block
    model = MHCSequential(layers, max_history=4, mode="mhc", constraint="identity")
    x = torch.randn(8, 128)
    output = model(x)
    assert output.shape == (8, 128) and torch.isfinite(output).all()
    assert torch.equal(output, MHCSequential(layers, mode="residual")(x))


def test_quickstart_and_variational_stochastic_mixing():
    torch.manual_seed(0)
    layers = [nn.Linear(32, 32) for _ in range(3)]
    model = MHCSequential(layers, max_history=4, stochastic=True, temperature=0.5)
    model.train()
    x = torch.randn(1, 32)
    outputs = [model(x).detach() for _ in range(5)]
    assert any(not torch.allclose(outputs[0], out) for out in outputs[1:])  # sampled in training
    model.eval()
    out1, out2 = model(x), model(x)
    assert torch.equal(out1, out2) and torch.equal(out1, MHCSequential(layers, mode="residual")(x))


def test_basic_usage_custom_block_and_auto_project():
    class MyCustomBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.skip = MHCSkip(max_history=4)
            self.layer = nn.Linear(dim, dim)

        def forward(self, x, history=None):
            out = self.layer(x)
            out = self.skip(out, history or [])
            return out

    block = MyCustomBlock(16)
    x = torch.randn(4, 16, requires_grad=True)
    assert torch.equal(block(x), block.layer(x))
    out = block(x, [torch.randn(4, 16), x])
    assert torch.equal(out, block.layer(x) + x)  # exactly the residual block at init
    out.sum().backward()
    assert block.skip.mixing_logits.grad is not None and x.grad is not None
    skip = MHCSkip(max_history=4, auto_project=True)
    assert skip(torch.randn(2, 8), [torch.randn(2, 16), torch.randn(2, 8)]).shape == (2, 8)
    model = MHCSequential([nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)], max_history=4, mode="mhc")
    model.clear_history()
    assert model(torch.randn(2, 64)).shape == (2, 64)


def test_custom_layers_guide():
    from mhc_fx.compat import HistoryBuffer, mhc_compatible
    from mhc_fx.compat.layers.managed import HistoryBuffer as ManagedBuffer  # the advanced guide's path

    assert ManagedBuffer is HistoryBuffer

    @mhc_compatible
    class MySuperLayer(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.skip = MHCSkip(max_history=4)
            self.layer = nn.Linear(dim, dim)

        def forward(self, x, history=None):
            x = self.layer(x)
            return self.skip(x, history or [])

    class MyNonSequentialModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.buffer = HistoryBuffer(max_history=4)
            self.skip = MHCSkip(max_history=4)
            self.layer = nn.Linear(64, 64)

        def forward(self, x):
            hist = self.buffer.get()
            out = self.layer(x)
            out = self.skip(out, hist)
            self.buffer.append(out)
            return out

    assert MySuperLayer(8)._mhc_compatible and MySuperLayer(8)(torch.randn(2, 8)).shape == (2, 8)
    model = MyNonSequentialModel()
    x = torch.randn(2, 64)
    with torch.no_grad():
        first = model(x)
        second = model(x)  # a user-managed buffer keeps what the user appends, as in the package
    assert torch.equal(first, model.layer(x)) and torch.equal(second, model.layer(x) + first)
    assert len(model.buffer) == 2


def test_readme_inject_into_a_torchvision_resnet():
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = models.resnet50(weights=None)  # the docs load pretrained weights: no download in tests
    original = models.resnet50(weights=None)
    original.load_state_dict(model.state_dict())
    inject_mhc(model, target_types=torch.nn.Conv2d, max_history=4)
    convs = [m for m in original.modules() if isinstance(m, nn.Conv2d)]
    assert sum(type(m).__name__ == "InjectedMHC" for m in model.modules()) == len(convs)
    assert model.state_dict().keys() >= {k.replace("conv1.", "conv1.base_module.") for k in ["conv1.weight"]}
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()
    assert not torch.allclose(out, original(x))  # the package's meaning: skips the model never had
    out.sum().backward()
    assert model.conv1.base_module.weight.grad is not None


@pytest.mark.parametrize("name", ["stable", "aggressive", "research"])
def test_presets_build_skips(name):
    skip = MHCSkip(**get_preset(name))
    x = torch.randn(2, 8)
    history = [torch.randn(2, 8) for _ in range(3)]
    want = x + history[-1] if name == "stable" else x + torch.stack(history).mean(0)  # init identity / uniform
    torch.testing.assert_close(skip(x, history), want)


def test_config_guide_singleton():
    import mhc_fx.compat as mhc

    mhc.set_default_config(max_history=6, mode="mhc", constraint="identity", epsilon=0.2, detach_history=True)
    model = mhc.MHCSequential([nn.Linear(4, 4) for _ in range(3)])
    assert all((s.max_history, s.constraint, s.epsilon) == (6, "identity", 0.2) for s in model.skip_layers)


def test_matrix_mixing_feature():
    from mhc_fx.compat.constraints.matrix import project_doubly_stochastic
    from mhc_fx.compat.layers import MatrixMHCSkip

    skip = MatrixMHCSkip(max_history=4)  # the page writes dim=64, which the package does not take
    history_list = [torch.randn(2, 64) for _ in range(4)]
    output = torch.randn(2, 64)
    mixed = skip(output, history_list)
    assert mixed.shape == (2, 64) and torch.isfinite(mixed).all()
    matrix = project_doubly_stochastic(skip.mixing_logits, iterations=20)
    torch.testing.assert_close(matrix.sum(-1), torch.ones(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(matrix.sum(-2), torch.ones(4), atol=1e-3, rtol=0)
    assert not torch.allclose(mixed, output + history_list[-1])  # near uniform at init, not the identity


def test_conv2d_demo():
    from mhc_fx.compat.layers import MHCBasicBlock, MHCBottleneck, MHCConv2d

    conv = MHCConv2d(in_channels=3, out_channels=64, kernel_size=3, padding=1, max_history=4, mode="mhc")
    assert conv(torch.randn(8, 3, 32, 32)).shape == (8, 64, 32, 32)
    layer = MHCConv2d(in_channels=64, out_channels=64, kernel_size=3, max_history=4, mode="mhc")  # vision guide
    assert layer(torch.randn(2, 64, 8, 8)).shape == (2, 64, 6, 6)
    x = torch.randn(8, 64, 16, 16)
    assert MHCBasicBlock(in_channels=64, out_channels=64, stride=1, max_history=4)(x).shape == (8, 64, 16, 16)
    assert MHCBasicBlock(64, 128, stride=2)(x).shape == (8, 128, 8, 8)
    assert MHCBottleneck(in_channels=256, out_channels=64, stride=1)(torch.randn(2, 256, 8, 8)).shape == (2, 256, 8, 8)

    set_seed(42, verbose=False)
    model = nn.Sequential(
        MHCConv2d(3, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        MHCBasicBlock(32, 32),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    loader = DataLoader(TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))), batch_size=16)
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    for i, (batch_x, batch_y) in enumerate(loader):
        if i >= 5:
            break
        optimizer.zero_grad()
        loss = criterion(model(batch_x), batch_y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert not torch.equal(before[0], model[0].conv.weight)

    class StandardBlock(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.relu = nn.ReLU()

        def forward(self, x):
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    standard, mhc_block = StandardBlock(64), MHCBasicBlock(64, 64, max_history=4)
    count = sum(p.numel() for p in mhc_block.parameters()) - sum(p.numel() for p in standard.parameters())
    assert count == 4  # the mixing logits
    mhc_block.load_state_dict(standard.state_dict(), strict=False)
    assert torch.equal(mhc_block(x[:2]), standard(x[:2]))


def test_checkpointing_demo():
    dim, depth = 128, 50
    model = MHCSequential([nn.Linear(dim, dim) for _ in range(depth)], max_history=4, use_checkpointing=True)
    x = torch.randn(8, dim, requires_grad=True)
    model(x).mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())


def test_gating_demo():
    torch.manual_seed(0)
    dim, depth = 64, 10
    model_gated = MHCSequential([nn.Linear(dim, dim)] + [nn.ReLU() for _ in range(depth)], use_gating=True)
    x, y = torch.randn(16, dim), torch.randn(16, dim)
    criterion = nn.MSELoss()
    optimizer = optim.Adam(model_gated.parameters(), lr=1e-2)
    gate_values, losses = [], []
    for _ in range(50):
        optimizer.zero_grad()
        loss = criterion(model_gated(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        with torch.no_grad():
            gate_values.append(torch.sigmoid(model_gated.skip_layers[0].gate_logit).item())
    assert gate_values[-1] != pytest.approx(torch.sigmoid(torch.tensor(2.0)).item(), abs=1e-4)
    assert losses[-1] < losses[0] and all(0 < g < 1 for g in gate_values)


def test_pruning_demo():
    model = MHCSequential([nn.Linear(32, 32) for _ in range(5)], max_history=4, prune_threshold=0.2)
    assert model(torch.randn(1, 32)).shape == (1, 32)
    assert model.skip_layers[0].prune_threshold == 0.2


def test_visualization_and_dashboard_demos(tmp_path, monkeypatch):
    from mhc_fx.compat.utils.visualization import (
        create_training_dashboard,
        extract_mixing_weights,
        plot_gradient_flow,
        plot_history_contribution,
        plot_mixing_weights,
    )

    monkeypatch.chdir(tmp_path)

    def create_sample_model(input_dim=64, hidden_dim=64, num_layers=5):
        layers = []
        for i in range(num_layers):
            layers.extend([nn.Linear(input_dim if i == 0 else hidden_dim, hidden_dim), nn.ReLU()])
        return MHCSequential(layers, max_history=4, mode="mhc", constraint="identity", epsilon=0.1)

    set_seed(42, verbose=False)
    model = create_sample_model()
    model(torch.randn(8, 64))
    plot_mixing_weights(model, save_path="mixing_weights.png")
    weights = extract_mixing_weights(model)
    assert len(weights) == 10 and all(torch.equal(a, torch.tensor([0.0, 0, 0, 1])) for a in weights.values())
    plot_gradient_flow(model, torch.randn(8, 64), target=torch.randn(8, 64), loss_fn=nn.MSELoss())
    first_layer_name = list(weights)[0]
    plot_history_contribution(weights[first_layer_name], layer_name=first_layer_name)

    loader = DataLoader(TensorDataset(torch.randn(32, 64), torch.randn(32, 64)), batch_size=16, shuffle=True)
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    initial = model.skip_layers[9].mixing_logits.detach().clone()
    metrics = {"loss": [], "mixing_weights_history": []}
    for _ in range(3):  # the demo runs 10 epochs
        epoch_loss = 0.0
        for batch_x, batch_y in loader:
            optimizer.zero_grad()
            loss = nn.MSELoss()(model(batch_x), batch_y)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        metrics["loss"].append(epoch_loss / len(loader))
        metrics["mixing_weights_history"].append(list(extract_mixing_weights(model).values())[0].numpy())
    fig = create_training_dashboard(metrics)
    assert (tmp_path / "mixing_weights.png").stat().st_size > 0 and len(fig.axes) == 2
    assert len(metrics["mixing_weights_history"]) == 3 and all(len(w) == 4 for w in metrics["mixing_weights_history"])
    assert not torch.equal(model.skip_layers[9].mixing_logits, initial)  # the identity init has a live gradient
