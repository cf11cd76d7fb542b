"""Worker for tests/test_distributed.py: trains a converted GPT in one of 2 gloo processes."""

from __future__ import annotations

import faulthandler
import sys

import torch
import torch.distributed as dist

import mhc_fx
from tests.helpers import perturb_mixing
from tests.models.gpt import GPT

STEPS = 5


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    model = mhc_fx.convert(GPT(layers=2, dim=16), mode="mhc")
    return perturb_mixing(model, scale=0.5, seed=1)  # away from the identity so the mixing trains


def batches():
    gen = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        yield torch.randint(0, 64, (4, 8), generator=gen), torch.randint(0, 64, (4, 8), generator=gen)


def loss_of(model, x, y):
    return torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


def optimizer(kind: str, params):
    """SGD; AdamW for the torchtitan-order run (as torchtitan trains). Its eps is raised from 1e-8:
    the key bias's gradient is exactly zero in exact arithmetic (softmax ignores a constant per
    query), and Adam would blow its float rounding noise (1e-9) up to steps of size lr."""
    if kind == "fsdp2_titan":
        return torch.optim.AdamW(params, lr=1e-2, eps=1e-4)
    return torch.optim.SGD(params, lr=0.5)


def torchtitan_blocks(model) -> None:
    """torchtitan's order after convert: activation checkpointing per block, then torch.compile per
    block (in place, backend "mhc"); fully_shard follows in `main`."""

    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for i, block in enumerate(model.blocks):
        wrapped = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
        wrapped.compile(backend="mhc")
        model.blocks[i] = wrapped


def train(model, rank: int | None, world: int, kind: str = "ddp") -> None:
    opt = optimizer(kind, model.parameters())
    for x, y in batches():
        if rank is not None:  # each rank takes its slice of the global batch
            per = x.shape[0] // world
            x, y = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()


def main(kind: str, rank: int, world: int, init_file: str, out: str) -> None:
    faulthandler.dump_traceback_later(240, exit=True)  # a hang reports where it is (the test waits 300 s)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = build()
    if kind == "ddp":
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        train(wrapped, rank, world)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        from torch.distributed.fsdp import fully_shard

        if kind == "fsdp2_titan":
            torchtitan_blocks(model)
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        train(model, rank, world, kind)
        state = {
            k.replace("._checkpoint_wrapped_module", ""): (v.full_tensor() if hasattr(v, "full_tensor") else v)
            .detach()
            .clone()
            for k, v in model.state_dict().items()
        }
    if rank == 0:
        torch.save(state, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
