"""DDP and FSDP2 on CPU (gloo, 2 spawned processes) train a converted model like one process; FSDP2 also
in torchtitan's order (convert, checkpoint each block, compile each block, shard, AdamW)."""

from __future__ import annotations

import pytest
import torch

from tests import distributed_worker as worker
from tests.helpers import run_ranks


def _single_process_state(kind: str):
    model = worker.build()  # no checkpointing, no compile: the plain reference
    worker.train(model, None, 1, kind)
    return model.state_dict()


@pytest.mark.parametrize("kind", ["ddp", "fsdp2", "fsdp2_titan"])
def test_two_process_training_equals_one_process(kind, tmp_path):
    init_file, out = tmp_path / "init", tmp_path / "state.pt"
    run_ranks("tests.distributed_worker", lambda rank: (kind, rank, 2, init_file, out), tmp_path)
    distributed = torch.load(out, weights_only=True)
    single = _single_process_state(kind)
    assert distributed.keys() == single.keys()
    mixing = [k for k in single if k.startswith("mhc.") and k != "mhc.config_record"]
    assert mixing
    moved = [k for k in mixing if not torch.equal(single[k], worker.build().state_dict()[k])]
    assert moved, "the mixing weights must have trained"
    for key in single:
        torch.testing.assert_close(distributed[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
