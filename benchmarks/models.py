"""The GPT variants of the end-to-end comparison, all from one set of initial weights.

    residual            the plain nanoGPT model (tests/models/gpt.py)
    convert_residual    mhc_fx.convert(mode="residual")   (the rewrite alone)
    convert_hc          mhc_fx.convert(mode="hc", max_history=H)
    convert_mhc         mhc_fx.convert(mode="mhc", max_history=H)
    mhc_package         the `mhc` package's MHCSequential over the 2L sub-block branches
    hyper_connections   lucidrains' hyper-connections, mHC flavour, ``streams`` residual streams

The two peers are built from the same sub-blocks: each transformer block
contributes two branches, ``attn(ln_1(x))`` and ``mlp(ln_2(x))``, which is the
same network and the same 2L residual sites that `convert` finds.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

import mhc_fx
from tests.models.gpt import GPT

from . import peers

OURS = ("residual", "convert_residual", "convert_hc", "convert_mhc")
PEERS = {"mhc_package": "mhc", "hyper_connections": "hyper_connections"}
LABELS = {
    "residual": "residual (plain model)",
    "convert_residual": "convert, residual",
    "convert_hc": "convert, hc",
    "convert_mhc": "convert, mhc",
    "mhc_package": "mhc package MHCSequential",
    "hyper_connections": "hyper-connections mHC",
}


@dataclasses.dataclass(frozen=True)
class GPTSize:
    """A nanoGPT shape and its batch. ``vocab=65``: character-level, as nanoGPT's shakespeare_char."""

    layers: int
    dim: int
    heads: int
    seq: int
    batch: int
    vocab: int = 65

    def state_bytes(self, element_size: int = 4) -> int:
        """Bytes of one residual-stream state (B, T, C)."""
        return self.batch * self.seq * self.dim * element_size


def base_gpt(size: GPTSize, seed: int = 0) -> GPT:
    """The plain model every variant starts from (dropout 0, so train and eval compute the same)."""
    torch.manual_seed(seed)
    return GPT(vocab=size.vocab, dim=size.dim, heads=size.heads, layers=size.layers, block_size=size.seq)


class Branch(nn.Module):
    """One sub-block branch ``f(norm(x))`` (the part a residual add adds)."""

    def __init__(self, norm: nn.Module, body: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(x))


def branches(gpt: GPT) -> list[nn.Module]:
    """The 2L branches of a GPT, in order."""
    out: list[nn.Module] = []
    for block in gpt.blocks:
        out += [Branch(block.ln_1, block.attn), Branch(block.ln_2, block.mlp)]
    return out


class TrunkGPT(nn.Module):
    """A GPT whose residual trunk is replaced: embeddings -> ``expand`` -> ``trunk`` -> ``reduce`` -> head."""

    def __init__(self, gpt: GPT, trunk: nn.Module, expand: nn.Module | None = None, reduce: nn.Module | None = None):
        super().__init__()
        self.wte, self.wpe, self.drop = gpt.wte, gpt.wpe, gpt.drop
        self.ln_f, self.head = gpt.ln_f, gpt.head
        self.trunk = trunk
        self.expand = expand or nn.Identity()
        self.reduce = reduce or nn.Identity()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        x = self.reduce(self.trunk(self.expand(x)))
        return self.head(self.ln_f(x))


def mhc_package_gpt(gpt: GPT, history: int) -> nn.Module:
    """The `mhc` package's MHCSequential over the branches. ``detach_history=False``
    (its default is True) so gradients reach every state, as in ours."""
    mhc = peers.load("mhc")
    gpt = copy.deepcopy(gpt)
    trunk = mhc.MHCSequential(branches(gpt), max_history=history, mode="mhc", detach_history=False)
    return TrunkGPT(gpt, trunk)


def hyper_connections_gpt(gpt: GPT, streams: int) -> nn.Module:
    """hyper-connections' manifold-constrained variant (Sinkhorn, its defaults), one per branch."""
    hc = peers.load("hyper_connections")
    gpt = copy.deepcopy(gpt)
    init, expand, reduce = hc.mc_get_init_and_expand_reduce_stream_functions(streams)
    dim = gpt.wte.embedding_dim
    wrapped = [init(dim=dim, branch=b, layer_index=i) for i, b in enumerate(branches(gpt))]
    return TrunkGPT(gpt, nn.Sequential(*wrapped), expand, reduce)


def build(name: str, gpt: GPT, *, history: int, streams: int) -> nn.Module | None:
    """Variant ``name`` built from ``gpt`` (never modified), or None when its peer is not installed."""
    if name == "residual":
        return copy.deepcopy(gpt)
    if name.startswith("convert_"):
        return mhc_fx.convert(gpt, mode=name.removeprefix("convert_"), max_history=history)
    if name in PEERS:
        if peers.load(PEERS[name]) is None:
            return None
        if name == "mhc_package":
            return mhc_package_gpt(gpt, history)
        return hyper_connections_gpt(gpt, streams)
    raise ValueError(f"unknown model variant {name!r}; known: {list(LABELS)}")
