"""Own-defined models for the convert tests, each tiny (dims 8-32) and deterministic.

Every entry of `ZOO` is a `ZooEntry`: a ``make()`` factory (fixed-seed weights),
``example_inputs()`` (a tuple of positional args, built from a fixed-seed
``torch.Generator``), the TRUE number of residual sites counted by hand from the
architecture (the comment on each model explains the count), the chain structure
(list of chain lengths, in execution order), the path of the first layer (its
weight must receive a gradient), and a few facts the tests use.

GPT and PostNormTransformer are reused from `tests.models.gpt`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .gpt import GPT, Block, PostNormTransformer

SEED = 1234


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seeded(cls, *args, **kwargs) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return cls(*args, **kwargs)

    return make


# ----------------------------------------------------------------------------
# Residual MLP
# ----------------------------------------------------------------------------
class ResMLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class ResidualMLP(nn.Module):
    """inp -> 3 x (x + MLP(x)) -> head.

    Sites: one per block = 3. Each block's stream is the previous block's output
    directly, so the three sites form ONE chain of 3.
    """

    def __init__(self, d_in: int = 8, dim: int = 16, hidden: int = 32, blocks: int = 3, d_out: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(ResMLPBlock(dim, hidden) for _ in range(blocks))
        self.head = nn.Linear(dim, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


# ----------------------------------------------------------------------------
# ResNet-style CNN with BatchNorm and projection shortcuts
# ----------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision style: ``identity = x`` or a projection (1x1 conv + BN) when the
    stride or the width changes; ``out += identity`` in place."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return F.relu(out)


class ResNetCNN(nn.Module):
    """stem (conv-BN-ReLU) -> stage1: 2 identity blocks (8 ch, 8x8)
    -> stage2: projection block (stride 2, 16 ch) + 2 identity blocks (4x4)
    -> stage3: projection block (stride 2, 32 ch) + 1 identity block (2x2)
    -> global average pool -> linear.

    Sites: every identity-shortcut block adds its input x (an ancestor of the
    branch) = 2 + 2 + 1 = 5 sites. The two projection-shortcut adds are NOT
    sites: downsample(x) is not an ancestor of the branch (both are computed from x).
    Chains: the next block's stream is relu(y) (a shape-preserving op) so the
    identity blocks of one stage chain together; after a projection block the
    stream comes from a non-site add, so a new chain starts:
    chain 0 = stage1 (2 sites), chain 1 = stage2 (2), chain 2 = stage3 (1).
    """

    block = BasicBlock

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 32), classes: int = 4) -> None:
        super().__init__()
        c1, c2, c3 = channels
        block = self.block
        self.stem = nn.Sequential(nn.Conv2d(3, c1, 3, 1, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.stage1 = nn.Sequential(block(c1, c1), block(c1, c1))
        self.stage2 = nn.Sequential(block(c1, c2, 2), block(c2, c2), block(c2, c2))
        self.stage3 = nn.Sequential(block(c2, c3, 2), block(c3, c3))
        self.fc = nn.Linear(c3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class IdentityShortcutBlock(BasicBlock):
    """timm / Hugging Face style: the shortcut is always a module, ``nn.Identity()``
    when the shape is kept; ``out = out + self.shortcut(x)``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, stride)
        self.shortcut = self.downsample if self.downsample is not None else nn.Identity()
        del self.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNetIdentityShortcut(ResNetCNN):
    """ResNetCNN with `IdentityShortcutBlock`: the same function class, the same
    TRUE sites (5, chains 2 + 2 + 1): nn.Identity returns its input, so the
    stream is still x."""

    block = IdentityShortcutBlock


# ----------------------------------------------------------------------------
# ViT-style encoder
# ----------------------------------------------------------------------------
class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.norm2(x))
        return x


class ViTEncoder(nn.Module):
    """Conv patch embedding (3x8x8 image, patch 4 -> 4 tokens) + cls token +
    learned position embedding, 2 pre-norm blocks, final norm, head on cls.

    Sites: 2 per block (attention, MLP) x 2 blocks = 4, ONE chain of 4 (each
    site's stream is the previous site's output). Not sites: the position
    embedding add (a parameter, not computed from the tokens).
    """

    def __init__(
        self, image: int = 8, patch: int = 4, dim: int = 16, heads: int = 2, depth: int = 2, classes: int = 4
    ) -> None:
        super().__init__()
        tokens = (image // patch) ** 2 + 1
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        cls = self.cls.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


# ----------------------------------------------------------------------------
# MLP-Mixer
# ----------------------------------------------------------------------------
class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mlp(self.norm2(x))
        return x


class MLPMixer(nn.Module):
    """Conv patch embedding (3x8x8, patch 2 -> 16 tokens of 16 channels),
    2 Mixer blocks, norm, mean over tokens, head.

    Sites: token-mixing + channel-mixing residual per block x 2 blocks = 4,
    ONE chain of 4.
    """

    def __init__(self, image: int = 8, patch: int = 2, dim: int = 16, depth: int = 2, classes: int = 4) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*(MixerBlock(tokens, dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = self.blocks(x)
        return self.head(self.norm(x).mean(dim=1))


# ----------------------------------------------------------------------------
# All the syntactic forms of a residual add
# ----------------------------------------------------------------------------
class MixedForms(nn.Module):
    """``x + f(x)``, ``f(x) + x``, ``torch.add(x, f(x))``, ``x += f(x)`` in a row.

    Sites: the four forms = 4, ONE chain of 4 (each stream is the previous
    site's output). Not sites: the bias add after ``inp`` (a parameter, not
    computed from x) and the ``h + 0.044715 * h**3`` add of the hand-written
    activation (no op with parameters on the branch path).
    """

    def __init__(self, d_in: int = 8, dim: int = 16, d_out: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, dim, bias=False)
        self.bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.f1 = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.f2 = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.f3 = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.f4 = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.bias  # not a site: bias add
        h = h + self.f1(h)  # site 1: x + f(x)
        h = self.f2(h) + h  # site 2: f(x) + x
        h = torch.add(h, self.f3(h))  # site 3: torch.add(x, f(x))
        # site 4: in place. relu saves its output (not h), so mutating h is autograd-safe.
        h += self.f4(torch.relu(h))
        g = h + 0.044715 * h**3  # not a site: no parameters on the branch path
        return self.head(g)


# ----------------------------------------------------------------------------
# U-Net with concatenation skips
# ----------------------------------------------------------------------------
class UNet(nn.Module):
    """Two-level U-Net on 3x8x8 images; the skips are concatenations.

    Sites: 0 (no addition at all: the skips are torch.cat).
    """

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(2 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # c x 8 x 8
        e2 = self.enc2(F.max_pool2d(e1, 2))  # 2c x 4 x 4
        m = self.mid(F.max_pool2d(e2, 2))  # 2c x 2 x 2
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))  # 2c x 4 x 4
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))  # c x 8 x 8
        return self.out(d1)


# ----------------------------------------------------------------------------
# No residual add
# ----------------------------------------------------------------------------
class ConvNeXtBlock(nn.Module):
    """ConvNeXt: depthwise conv, then LayerNorm and MLP in channels-last, scaled, permuted back.
    The branch ends in a permute, so it has other strides than the stream."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x):
        h = self.dw(x).permute(0, 2, 3, 1)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, 2)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class PlainMLP(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear: no addition, 0 sites."""

    def __init__(self, d_in: int = 8, dim: int = 16, d_out: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.fc3 = nn.Linear(dim, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


# ----------------------------------------------------------------------------
# In-place residual on a stream another name still refers to (not in ZOO)
# ----------------------------------------------------------------------------
class AliasedInplace(nn.Module):
    """``skip = h; h += f(relu(h))``: the in-place add also changes ``skip`` (the same
    tensor), so the original returns ``(h + g(h)) * h_new``. Legal for autograd: relu
    saves its output, not h. Sites: the in-place add and ``h + g(h)`` = 2, one chain.
    """

    def __init__(self, d_in: int = 8, dim: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.f = nn.Linear(dim, dim)
        self.g = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        skip = h
        h += self.f(torch.relu(h))
        h = h + self.g(h)
        return h * skip


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    make: Callable[[], nn.Module]
    example_inputs: Callable[[], tuple]
    sites: int  # the true site count (see each model's docstring)
    chains: tuple[int, ...]  # chain lengths in execution order (empty when no site)
    first_layer: str  # module path of the first parameterised layer
    input_name: str  # the forward's first parameter (for keyword calls)
    kwargs: Callable[[], dict] | None = None  # extra keyword inputs (HF attention_mask)
    hf: bool = False
    block_class: type | None = None  # the block class, for include/exclude tests
    notes: str = ""

    def __repr__(self) -> str:  # short pytest ids
        return self.name


def _tokens(vocab: int = 64, batch: int = 2, length: int = 8) -> Callable[[], tuple]:
    return lambda: (torch.randint(0, vocab, (batch, length), generator=_gen()),)


def _floats(*shape: int) -> Callable[[], tuple]:
    return lambda: (torch.randn(*shape, generator=_gen()),)


ZOO: list[ZooEntry] = [
    ZooEntry("residual_mlp", _seeded(ResidualMLP), _floats(4, 8), 3, (3,), "inp", "x", block_class=ResMLPBlock),
    # GPT: 4 blocks x (attention + MLP) = 8 sites, ONE chain of 8 through the block
    # boundaries. Not a site: wte + wpe (neither computed from the other).
    ZooEntry("gpt", _seeded(GPT, layers=4, dim=32), _tokens(), 8, (8,), "wte", "idx", block_class=Block),
    # PostNormTransformer: 3 blocks x 2 = 6 sites, ONE chain of 6: the next stream is
    # LayerNorm(y) (a shape-preserving single-input op).
    ZooEntry("postnorm", _seeded(PostNormTransformer, layers=3, dim=32), _tokens(), 6, (6,), "embed", "idx"),
    ZooEntry(
        "resnet_cnn", _seeded(ResNetCNN), _floats(2, 3, 8, 8), 5, (2, 2, 1), "stem.0", "x", block_class=BasicBlock
    ),
    ZooEntry(
        "resnet_identity_module",
        _seeded(ResNetIdentityShortcut),
        _floats(2, 3, 8, 8),
        5,
        (2, 2, 1),
        "stem.0",
        "x",
        block_class=IdentityShortcutBlock,
    ),
    ZooEntry("vit", _seeded(ViTEncoder), _floats(2, 3, 8, 8), 4, (4,), "patch", "images", block_class=ViTBlock),
    ZooEntry("mixer", _seeded(MLPMixer), _floats(2, 3, 8, 8), 4, (4,), "patch", "images", block_class=MixerBlock),
    ZooEntry("mixed_forms", _seeded(MixedForms), _floats(4, 8), 4, (4,), "inp", "x"),
    # ConvNeXt: 3 blocks x 1 add = 3 sites, one chain; the branch's permuted layout must not
    # leak into the stream (the next depthwise conv would pick another algorithm).
    ZooEntry("convnext", _seeded(ConvNeXt), _floats(2, 3, 16, 16), 3, (3,), "stem", "x", block_class=ConvNeXtBlock),
    ZooEntry("unet", _seeded(UNet), _floats(2, 3, 8, 8), 0, (), "enc1.0", "x"),
    ZooEntry("plain_mlp", _seeded(PlainMLP), _floats(4, 8), 0, (), "fc1", "x"),
]

BY_NAME = {e.name: e for e in ZOO}
