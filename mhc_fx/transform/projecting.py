"""``auto_project``: a chain that goes on across a projection shortcut.

A ResNet stage starts with ``y = shortcut(x) + f(x)``, where ``shortcut`` (a strided 1x1 conv and
a norm) changes the stream's shape. Without ``auto_project`` that addition is no site and the
stage starts a new chain. With it, the addition is a site whose stream is ``shortcut(x)``, and
the chain's older states (the shape of ``x``) reach the new shape through a learned map of the
site: average pooling to the new spatial size, then a bias-free 1x1 convolution (NCHW), or a
bias-free linear map of the last dim when only that dim changes. The mapped states replace the
old ones in the chain's window, so later sites of the chain mix states of one shape. At init
the site's weights are the identity (the older states weigh exactly 0), so the model is the
original; the map's weights start like ``nn.Conv2d``'s and get gradients once the site mixes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: The suffix of a site's projection weight, next to its logits (``mhc.layer2.0.site0_project``).
SUFFIX = "_project"


def weight_shape(source: tuple, target: tuple) -> tuple[int, ...] | str:
    """The shape of the map's weight from states of shape ``source`` to ``target`` (batch dim
    included), or the reason there is none."""
    if len(source) == 4 and len(target) == 4 and source[0] == target[0]:
        (sh, sw), (th, tw) = source[2:], target[2:]
        if th > sh or tw > sw:
            return f"the new spatial size {(th, tw)} is larger than the old {(sh, sw)}"
        return (target[1], source[1], 1, 1)
    if len(source) == len(target) and source[:-1] == target[:-1]:
        return (target[-1], source[-1])
    return (
        f"cannot map a state of shape {tuple(source)} onto {tuple(target)}: auto_project maps NCHW states "
        "(pooling and a 1x1 convolution) or states that differ in their last dim only (a linear map)"
    )


def init_weight_(weight: Tensor) -> Tensor:
    """``nn.Conv2d`` / ``nn.Linear``'s default init of a weight."""
    with torch.no_grad():
        return torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


def new_weight(source: tuple, target: tuple, device: torch.device) -> Tensor:
    shape = weight_shape(source, target)
    assert not isinstance(shape, str), shape
    return init_weight_(torch.empty(shape, device=device))


def project_state(state: Tensor, weight: Tensor, target: torch.Size) -> Tensor:
    """``state`` mapped onto ``target``'s shape by the site's map (its dtype follows ``state``)."""
    weight = weight.to(state.dtype)
    if weight.dim() == 4:
        if tuple(state.shape[-2:]) != tuple(target[-2:]):
            state = F.adaptive_avg_pool2d(state, tuple(target[-2:]))
        return F.conv2d(state, weight)
    return F.linear(state, weight)
