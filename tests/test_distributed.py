"""DDP and FSDP2 on CPU (gloo, 2 spawned processes) train a converted model like one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import distributed_worker as worker

ROOT = Path(__file__).resolve().parent.parent


def _single_process_state():
    model = worker.build()
    worker.train(model, None, 1)
    return model.state_dict()


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_process_training_equals_one_process(kind, tmp_path):
    init_file, out = tmp_path / "init", tmp_path / "state.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # Output goes to files, not pipes: a rank blocked on a full pipe while the test waits on
    # the other would look like a hang. A rank still running after the timeout dumps its
    # stack (faulthandler, in the worker) and both are stopped.
    logs = [tmp_path / f"rank{rank}.log" for rank in range(2)]
    procs = []
    for rank, log in enumerate(logs):
        with log.open("w") as sink:
            command = [sys.executable, "-m", "tests.distributed_worker", kind, str(rank), "2", str(init_file), str(out)]
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log.read_text()[-3000:]}"
    distributed = torch.load(out, weights_only=True)
    single = _single_process_state()
    assert distributed.keys() == single.keys()
    mixing = [k for k in single if k.startswith("mhc.") and k != "mhc.config_record"]
    assert mixing
    moved = [k for k in mixing if not torch.equal(single[k], worker.build().state_dict()[k])]
    assert moved, "the mixing weights must have trained"
    for key in single:
        torch.testing.assert_close(distributed[key], single[key], rtol=1e-5, atol=1e-6, msg=key)
