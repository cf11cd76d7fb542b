"""`mhc.layers.conv_mhc`: `MHCConv2d`, `MHCBasicBlock`, `MHCBottleneck` with the package's
signatures and parameter names, their skips compat `MHCSkip` layers (the same `mix` op).

The package kept each layer's history across calls: after the first call a layer mixed the
*previous batches'* detached states into the current one (a repeated input gave another output;
a new batch size raised). Here history lives inside one call (docs/migrating.md §3.4, §3.11), so
each call computes what the package computed on its first call:

- `MHCConv2d`: ``conv(x)``; its window holds no earlier state within the call.
- `MHCBasicBlock`, `MHCBottleneck`: ``relu(branch(x) + skip)`` with ``skip`` the (downsampled)
  input, a window of one state: the ResNet block, exactly.

For hyper-connections across blocks, write the plain residual network and `mhc_fx.convert` it.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._warn import warn_once
from .history_buffer import HistoryBuffer
from .mhc_skip import MHCSkip, resolve_detach


def _warn_per_call(name: str, stacklevel: int) -> None:
    warn_once(
        "conv_history",
        f"{name} keeps no history across calls (the package mixed earlier batches' states into later "
        "ones): MHCConv2d computes conv(x) and the blocks are exact ResNet blocks",
        stacklevel=stacklevel,
    )


class _PerCallHistory(nn.Module):
    """The package's ``history_buffer`` / ``clear_history`` API on a layer whose history lives
    inside one call: the buffer is empty between calls."""

    def clear_history(self) -> None:
        """Empty ``history_buffer`` (already empty between calls)."""
        self.history_buffer.clear()

    def _mix(self, branch: Tensor, states: list[Tensor]) -> Tensor:
        self.history_buffer.clear()  # a call never sees an earlier call's states
        return self.skip(branch, states)


class MHCConv2d(_PerCallHistory):
    """A ``Conv2d`` (``conv``) followed by an `MHCSkip` (``skip``), with the package's signature;
    mixing options left at None come from the default config. ``projection`` (a 1x1 conv, made when
    channels or stride change) is kept for the package's state dict. Within one call there is no
    earlier state to mix, so the output is ``conv(x)`` (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        max_history: int | None = None,
        mode: str | None = None,
        constraint: str | None = None,
        epsilon: float | None = None,
        temperature: float | None = None,
        detach_history: bool | None = None,
    ) -> None:
        super().__init__()
        detach_history = resolve_detach(detach_history)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups,
            bias=bias,
        )  # fmt: skip
        self.skip = MHCSkip(mode, max_history, constraint, epsilon, temperature, detach_history=detach_history)
        self.history_buffer = HistoryBuffer(self.skip.max_history, detach_history=detach_history)
        self.needs_projection = in_channels != out_channels or stride != 1
        if self.needs_projection:
            self.projection = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        _warn_per_call("MHCConv2d", stacklevel=4)

    def forward(self, x: Tensor) -> Tensor:
        """``conv(x)``, through the skip with the call's (empty) window."""
        return self._mix(self.conv(x), [])


class _ResidualBlock(_PerCallHistory):
    """What the two blocks share: the package's signature, the skip, the buffer, ``downsample`` and
    ``relu(branch(x) + skip)``; a subclass builds its branch and sets ``expansion``."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        max_history: int = 4,
        mode: str = "mhc",
        constraint: str = "simplex",
        epsilon: float = 0.1,
    ) -> None:
        super().__init__()
        expanded = out_channels * self.expansion
        self._build_branch(in_channels, out_channels, stride)
        self.relu = nn.ReLU(inplace=True)
        self.skip = MHCSkip(mode, max_history, constraint, epsilon)
        self.history_buffer = HistoryBuffer(max_history, detach_history=True)
        self.downsample = None
        if stride != 1 or in_channels != expanded:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, expanded, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(expanded),
            )
        _warn_per_call(type(self).__name__, stacklevel=4)

    def _build_branch(self, in_channels: int, out_channels: int, stride: int) -> None:
        raise NotImplementedError

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch, before the skip."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``relu(branch(x) + identity)``, ``identity`` the input or its downsampled copy."""
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self._mix(self.branch(x), [identity]))


class MHCBasicBlock(_ResidualBlock):
    """The ResNet basic block (3x3 conv, BN, ReLU, 3x3 conv, BN, skip, ReLU) with the package's
    signature ``(in_channels, out_channels, stride=1, max_history=4, mode="mhc",
    constraint="simplex", epsilon=0.1)`` and parameter names; ``downsample`` (1x1 conv + BN) when
    the stride or the channels change. Output ``[B, out_channels, H / stride, W / stride]``."""

    expansion = 1

    def _build_branch(self, in_channels: int, out_channels: int, stride: int) -> None:
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch, before the skip."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class MHCBottleneck(_ResidualBlock):
    """The ResNet bottleneck block (1x1 reduce, 3x3 with the stride, 1x1 expand by ``expansion``
    = 4, each with BN; skip, ReLU) with the package's signature (as `MHCBasicBlock`) and parameter
    names. Output ``[B, 4 * out_channels, H / stride, W / stride]``."""

    expansion = 4

    def _build_branch(self, in_channels: int, out_channels: int, stride: int) -> None:
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels * self.expansion)

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch, before the skip."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))
