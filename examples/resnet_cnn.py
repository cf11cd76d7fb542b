"""Convert a small ResNet-style CNN (BatchNorm, projection shortcuts), see what became a site, train it.

The identity-shortcut blocks become sites; the two projection-shortcut blocks are not residual
connections in the mHC sense (`conv(x) + downsample(x)`: neither operand is computed from the other),
so `explain` lists them as skipped and each stage is its own chain. Data: scikit-learn's 8x8 digits
when scikit-learn is installed, otherwise a synthetic 10-class set of noisy 8x8 patterns.

    python examples/resnet_cnn.py [--steps 100]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn import functional as F

import mhc_fx


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut: the input itself, or a 1x1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, three stages of ``blocks`` blocks (8, 16, 32 channels; the 2nd and 3rd stage start with a
    stride-2 projection block), global average pooling, a linear head."""

    def __init__(self, classes: int = 10, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        stages, c_in = [], 8
        for i, c_out in enumerate((8, 16, 32)):
            stages += [BasicBlock(c_in, c_out, 1 if i == 0 else 2)] + [
                BasicBlock(c_out, c_out) for _ in range(blocks - 1)
            ]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


def load_data(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images N x 1 x 8 x 8 in [0, 1], labels N, description)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        prototypes = torch.rand(10, 1, 8, 8, generator=generator)
        labels = torch.randint(0, 10, (1797,), generator=generator)
        images = (prototypes[labels] + 0.5 * torch.randn(len(labels), 1, 8, 8, generator=generator)).clamp(0, 1)
        return images, labels, "synthetic digits (scikit-learn is not installed): 10 noisy 8x8 prototypes"
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target), "scikit-learn's 8x8 digits"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    images, labels, description = load_data(generator)
    order = torch.randperm(len(labels), generator=generator)
    test, train = order[:300], order[300:]
    print(f"data: {description}; {len(train)} train / {len(test)} test images")

    original = SmallResNet()
    model = mhc_fx.convert(original, mode="mhc", max_history=3, example_inputs=images[:2])
    print(mhc_fx.explain(model))
    with torch.no_grad():
        same = torch.equal(original.eval()(images[test]), model.eval()(images[test]))
    print(f"identical to the original at init (eval mode): {same}\n")

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(1, args.steps + 1):
        idx = train[torch.randint(0, len(train), (32,), generator=generator)]
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % 25 == 0 or step == args.steps:
            print(f"step {step:3d}  train loss {loss.item():.3f}")

    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(-1) == labels[test]).float().mean().item()
    print(f"\ntest accuracy: {accuracy:.1%}")
    print("learned mixing weights alpha (oldest state first):")
    for site, alpha in mhc_fx.mixing_weights(model).items():
        print(f"  {site:18s} " + " ".join(f"{a:.3f}" for a in alpha.tolist()))


if __name__ == "__main__":
    main()
