"""Worker for tests/test_parallelism.py: tensor and pipeline parallelism of converted models
in one of 2 gloo processes.

One launch runs every scenario in turn (process start-up dominates the test's time); each
rank saves what it saw, ``{scenario: {...}}`` (values, gradients, or the error it raised),
to ``<out>/rank<r>.pt``; the test compares them with one process.

The model is Llama-shaped (explicit q/k/v/o and MLP up/down linears, LayerNorms) and, as
torchtitan writes its models, its root forward skips parts that are None, so that a
pipeline stage is a copy with the other stages' parts deleted.
"""

from __future__ import annotations

import copy
import faulthandler
import sys
import traceback

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import mhc_fx
from tests.helpers import perturb_mixing

VOCAB, DIM, HEADS, BATCH, SEQ = 64, 16, 4, 4, 8
SGD_STEPS = 5


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        # -1 heads: under tensor parallelism each rank holds heads / world of them
        q, k, v = (lin(x).view(b, t, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): Block(DIM, HEADS) for i in range(layers)})
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        for layer in self.layers.values():
            h = layer(h)
        h = self.norm(h) if self.norm is not None else h
        return self.head(h) if self.head is not None else h


def build(layers: int = 2) -> GPT:
    """A converted GPT whose mixing weights are off their init (so that they mix and train)."""
    torch.manual_seed(0)
    return perturb_mixing(mhc_fx.convert(GPT(layers), mode="mhc"), scale=0.5, seed=1)


def batch(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen), torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


# -- tensor parallelism -----------------------------------------------------------------


def tp_plan(layers: int, sequence_parallel: bool, dtensor_stream: bool = True) -> dict:
    """Attention q/k/v colwise, o rowwise; MLP up colwise, down rowwise. With sequence parallel
    (torchtitan's Llama plan): the norms SequenceParallel, the stream sharded on the sequence
    dim between blocks; ``dtensor_stream`` keeps it a DTensor (use_local_output=False on the
    three styles that produce it), else it is a plain local shard (torchtitan's default)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
    )

    plan: dict = {}
    local = not dtensor_stream
    if sequence_parallel:
        plan["embed"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=local)
        plan["norm"] = SequenceParallel()
        plan["head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())
    for i in range(layers):
        p = f"layers.{i}."
        out = dict(output_layouts=Shard(1), use_local_output=local) if sequence_parallel else {}
        plan |= {
            p + "attn.q": ColwiseParallel(),
            p + "attn.k": ColwiseParallel(),
            p + "attn.v": ColwiseParallel(),
            p + "attn.o": RowwiseParallel(**out),
            p + "mlp.up": ColwiseParallel(),
            p + "mlp.down": RowwiseParallel(**out),
        }
        if sequence_parallel:
            gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
            plan |= {p + "attn_norm": SequenceParallel(), p + "mlp_norm": SequenceParallel(), p + "attn": gather}
            plan[p + "mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return plan


def _full(t):
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _grads(model: nn.Module) -> dict:
    return {n: _full(p.grad).detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _kinds(model: nn.Module) -> dict:
    return {n: type(p).__name__ + str(getattr(p, "placements", "")) for n, p in model.named_parameters()}


def tensor_parallel(result: dict, mesh, sequence_parallel: bool, dtensor_stream: bool = True) -> None:
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    model = build()
    parallelize_module(model, mesh, tp_plan(len(model.layers), sequence_parallel, dtensor_stream))
    x, y = batch()
    seen = {}

    def record_stream(module, args, output) -> None:  # what the sites of layers.1 receive
        seen["stream"] = type(output).__name__ + str(getattr(output, "placements", ""))

    model.layers["0"].register_forward_hook(record_stream)
    result["kinds"] = _kinds(model)
    with torch.no_grad():
        result["eval_out"] = _full(model(x)).clone()
    out = _full(model(x))
    result["stream"] = seen["stream"]
    result["out"] = out.detach().clone()
    loss_fn(out, y).backward()
    result["grads"] = _grads(model)
    if not sequence_parallel:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(SGD_STEPS):
            xs, ys = batch(10 + step)
            opt.zero_grad()
            loss_fn(_full(model(xs)), ys).backward()
            opt.step()
        result["trained"] = {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
            for k, v in model.state_dict().items()
        }


# -- pipeline parallelism ---------------------------------------------------------------

PP_LAYERS, MICROBATCHES = 4, 2


def split(model: GPT, stage: int) -> GPT:
    """Stage 0 or 1 of a 2 + 2 split, torchtitan's way: a copy with the other stage's parts deleted."""
    part = copy.deepcopy(model)
    keep = range(0, 2) if stage == 0 else range(2, 4)
    for name in list(part.layers.keys()):
        if int(name) not in keep:
            del part.layers[name]
    if stage == 0:
        part.norm = None
        part.head = None
    else:
        part.embed = None
    return part


def stages() -> list[nn.Module]:
    """The split model with each stage converted on its own (its chain starts at its first layer)."""
    torch.manual_seed(0)
    model = GPT(PP_LAYERS)
    return [perturb_mixing(mhc_fx.convert(split(model, s), mode="mhc"), scale=0.5, seed=1 + s) for s in (0, 1)]


def pipeline(result: dict, rank: int, world: int) -> None:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    module = stages()[rank]
    stage = PipelineStage(module, stage_index=rank, num_stages=world, device=torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches=MICROBATCHES, loss_fn=loss_fn)
    x, y = batch()
    losses: list = []
    if rank == 0:
        schedule.step(x)
    else:
        schedule.step(target=y, losses=losses)
    result["grads"] = _grads(module)
    result["losses"] = [loss.detach().clone() for loss in losses]


# -- main -----------------------------------------------------------------------------


def _run(name: str, fn, results: dict) -> None:
    """``fn(result)`` fills ``results[name]``; an error is recorded there too (the test
    decides whether it was expected), next to what was recorded before it."""
    result = results[name] = {}
    try:
        fn(result)
    except Exception as e:
        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"
    dist.barrier()


def main(rank: int, world: int, init_file: str, out: str) -> None:
    faulthandler.dump_traceback_later(150, exit=True)  # a hang reports where it is (the test waits 180 s)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    results: dict = {}
    _run("tp", lambda r: tensor_parallel(r, mesh, sequence_parallel=False), results)
    _run("sp", lambda r: tensor_parallel(r, mesh, sequence_parallel=True), results)
    _run("sp_local", lambda r: tensor_parallel(r, mesh, sequence_parallel=True, dtensor_stream=False), results)
    _run("pp", lambda r: pipeline(r, rank, world), results)
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
