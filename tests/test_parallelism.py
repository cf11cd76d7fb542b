"""Tensor and pipeline parallelism of converted models on CPU (gloo, 2 spawned processes).

One launch of tests/parallel_worker.py runs every distributed scenario (module-scoped
fixture); each test compares what the ranks saved with one process.
"""

from __future__ import annotations

import pytest
import torch

import mhc_fx
from tests import parallel_worker as worker
from tests.helpers import perturb_mixing, run_ranks

WORLD = 2
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks saved, ``[rank0, rank1]``, each ``{scenario: {...}}``."""
    tmp = tmp_path_factory.mktemp("parallel")
    run_ranks("tests.parallel_worker", lambda rank: (rank, WORLD, tmp / "init", tmp), tmp, WORLD, timeout=180)
    return [torch.load(tmp / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


def _no_error(result: dict) -> None:
    assert "error" not in result, result["error"]


def _reference():
    """One process: the no-grad output, the output and the gradients of the same converted GPT on the same batch."""
    model = worker.build()
    x, y = worker.batch()
    with torch.no_grad():
        eval_out = model(x)
    out = model(x)
    worker.loss_fn(out, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return eval_out, out.detach(), grads


def _mixing(names) -> list[str]:
    return [n for n in names if n.startswith("mhc.")]


def _check_values_and_grads(results: list[dict]) -> None:
    eval_out, out, grads = _reference()
    assert _mixing(grads) and all(grads[n].abs().sum() > 0 for n in _mixing(grads)), "the mixing must be live"
    for rank, result in enumerate(results):
        _no_error(result)
        torch.testing.assert_close(result["eval_out"], eval_out, **TOL, msg=f"rank {rank}: no-grad output")
        torch.testing.assert_close(result["out"], out, **TOL, msg=f"rank {rank}: output")
        assert result["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            scale = grad.abs().max().item()
            torch.testing.assert_close(
                result["grads"][name], grad, rtol=1e-5, atol=1e-6 * max(scale, 1.0), msg=f"rank {rank}: {name}"
            )
        # the mixing weights stay plain, replicated parameters ...
        for name in _mixing(grads):
            assert result["kinds"][name] == "Parameter", (name, result["kinds"][name])
    # ... with the same gradient on both ranks (bitwise: both computed the same all-reduced sum)
    for name in _mixing(grads):
        assert torch.equal(results[0]["grads"][name], results[1]["grads"][name]), name


def test_tensor_parallel_equals_one_process(ranks):
    """Attention q/k/v colwise, o rowwise, MLP up colwise, down rowwise (no sequence parallel):
    outputs and gradients equal one process, and so do 5 SGD steps."""
    results = [r["tp"] for r in ranks]
    for result in results:
        _no_error(result)
        assert result["kinds"]["layers.0.attn.q.weight"] == "DTensor(Shard(dim=0),)"  # it is really sharded
        assert result["stream"] == "Tensor"  # the sites see the whole stream on every rank
    _check_values_and_grads(results)

    single = worker.build()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    opt = torch.optim.SGD(single.parameters(), lr=0.5)
    for step in range(worker.SGD_STEPS):
        xs, ys = worker.batch(10 + step)
        opt.zero_grad()
        worker.loss_fn(single(xs), ys).backward()
        opt.step()
    state = single.state_dict()
    moved = [k for k in _mixing(state) if k != "mhc.config_record" and not torch.equal(state[k], before[k])]
    assert moved, "the mixing weights must have trained"
    for rank, result in enumerate(results):
        assert result["trained"].keys() == state.keys()
        for key in state:
            torch.testing.assert_close(result["trained"][key], state[key], **TOL, msg=f"rank {rank}: {key}")


def test_sequence_parallel_with_a_dtensor_stream_equals_one_process(ranks):
    """torchtitan's Llama plan (norms SequenceParallel, stream sharded on the sequence dim),
    with the stream kept a DTensor: the sites mix Shard(1) DTensors (no gather), and the plain
    mixing weights get the gradient of the whole sequence on both ranks."""
    results = [r["sp"] for r in ranks]
    for result in results:
        _no_error(result)
        assert result["kinds"]["layers.0.attn_norm.weight"] == "DTensor(Replicate(),)"
        assert result["stream"] == "DTensor(Shard(dim=1),)"  # the mix kept the stream sharded
    _check_values_and_grads(results)


def test_sequence_parallel_with_a_plain_stream_raises(ranks):
    """The same plan with torchtitan's default use_local_output=True: each site sees this rank's
    plain sequence shard, so the mixing-weight gradients would be partial sums. The site raises;
    without gradients (inference) the output is right and nothing is raised."""
    eval_out, _, _ = _reference()
    for rank, r in enumerate(ranks):
        result = r["sp_local"]
        torch.testing.assert_close(result["eval_out"], eval_out, **TOL, msg=f"rank {rank}")
        error = result.get("error", "")
        assert error.startswith("RuntimeError: mhc_fx site 'layers.0.site1': sequence parallel is not supported")
        assert "use_local_output=False" in error and "'layers.0.attn_norm'" in error


def test_pipeline_stages_converted_after_split_equal_one_process(ranks):
    """A 4-layer GPT split 2 + 2, each stage converted on its own, GPipe with 2 microbatches:
    the loss and every gradient equal the two converted stages composed in one process."""
    stage0, stage1 = worker.stages()
    x, y = worker.batch()
    loss = worker.loss_fn(stage1(stage0(x)), y)
    loss.backward()
    for rank, stage in enumerate((stage0, stage1)):
        result = ranks[rank]["pp"]
        _no_error(result)
        grads = {n: p.grad for n, p in stage.named_parameters() if p.grad is not None}
        assert len(_mixing(grads)) == 3  # sites 2..4 of the stage's own chain
        assert result["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, **TOL, msg=f"stage {rank}: {name}")
    losses = ranks[1]["pp"]["losses"]
    assert len(losses) == worker.MICROBATCHES
    torch.testing.assert_close(torch.stack(losses).mean(), loss.detach(), **TOL)


def test_a_stage_converted_on_its_own_starts_its_chain():
    """explain(stage): one chain that starts at the stage's first layer, a plain add there."""
    stage0, stage1 = worker.stages()
    for stage, first in ((stage0, 0), (stage1, 2)):
        report = mhc_fx.explain(stage)
        assert len(report.chains) == 1
        sites = report.sites
        assert [s.name for s in sites] == [f"layers.{first + i // 2}.site{i % 2}" for i in range(4)]
        assert [s.position for s in sites] == [1, 2, 3, 4]
        assert [s.history for s in sites] == [1, 2, 3, 4]


def test_converting_before_splitting_restarts_the_window_at_the_boundary():
    """Convert the whole model, then split: stage 1's first sites expect states that live on stage 0;
    their window is the states stage 1 produced (as for a skipped layer), so the two stages compute
    the whole model with its chain's history cleared at the boundary."""
    torch.manual_seed(0)
    whole = perturb_mixing(mhc_fx.convert(worker.GPT(worker.PP_LAYERS), mode="mhc"), scale=0.5, seed=1)
    stage0, stage1 = worker.split(whole, 0), worker.split(whole, 1)
    x, _ = worker.batch()
    runtime = whole.__dict__["_mhc_fx_runtime"]
    whole.layers["2"].register_forward_pre_hook(lambda *_: runtime.scope.histories.clear())
    torch.testing.assert_close(stage1(stage0(x)), whole(x), rtol=0, atol=0)
