"""Threads sharing one converted model, and nn.DataParallel: the per-call state belongs to the call."""

from __future__ import annotations

import threading

import pytest
import torch

import mhc_fx
from tests.helpers import perturb_mixing
from tests.models.gpt import GPT

THREADS = 8
ROUNDS = 4


def _model():
    torch.manual_seed(0)
    # perturbed: every state of every window carries weight, so a mixed-up history shows
    return perturb_mixing(mhc_fx.convert(GPT(layers=3, dim=16)), scale=1.0, seed=1)


def _inputs():
    gen = torch.Generator().manual_seed(3)
    # lengths differ between threads: a state from another thread's call would not even fit
    return [torch.randint(0, 64, (2, 5 + i % 4), generator=gen) for i in range(THREADS)]


def _in_threads(work) -> list:
    """``work(i)`` in THREADS threads started together, ROUNDS times each; results per thread."""
    results = [[] for _ in range(THREADS)]
    errors = []
    start = threading.Barrier(THREADS)

    def run(i):
        try:
            start.wait()
            for _ in range(ROUNDS):
                results[i].append(work(i))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return results


def test_threads_calling_one_model_get_the_single_threaded_outputs():
    model, inputs = _model().eval(), _inputs()
    with torch.no_grad():
        expected = [model(x) for x in inputs]

    def work(i):
        with torch.no_grad():
            return model(inputs[i])

    for i, outs in enumerate(_in_threads(work)):
        assert all(torch.equal(out, expected[i]) for out in outs), f"thread {i}"
    assert model.__dict__["_mhc_fx_runtime"].scope is None


def test_threads_training_one_model_get_the_single_threaded_gradients():
    model, inputs = _model().train(), _inputs()
    params = [p for p in model.parameters()]

    def grads(i):
        return torch.autograd.grad(model(inputs[i]).square().mean(), params)

    expected = [grads(i) for i in range(THREADS)]
    for i, outs in enumerate(_in_threads(grads)):
        for got in outs:
            assert all(torch.equal(g, e) for g, e in zip(got, expected[i])), f"thread {i}"


def test_threads_calling_one_compiled_model_recompile_nothing():
    model, inputs = _model().eval(), _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="mhc", dynamic=True)
    with torch.no_grad():
        expected = [compiled(x) for x in inputs]  # compiles (dynamic shapes) before the threads start

    def work(i):
        with torch.no_grad():
            return compiled(inputs[i])

    with torch.compiler.set_stance("fail_on_recompile"):
        results = _in_threads(work)
    for i, outs in enumerate(results):
        assert all(torch.equal(out, expected[i]) for out in outs), f"thread {i}"
        torch.testing.assert_close(expected[i], model(inputs[i]), rtol=1e-5, atol=1e-5)


def test_data_parallel_without_replicas_is_the_model():
    # On the CPU (or one device) nn.DataParallel calls the module itself: outputs and gradients equal.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, x = _model().to(device), _inputs()[0].to(device)
    twin = perturb_mixing(mhc_fx.convert(GPT(layers=3, dim=16)), scale=0.0).to(device)
    twin.load_state_dict(model.state_dict())
    parallel = torch.nn.DataParallel(twin, device_ids=[0] if device == "cuda" else None)
    torch.testing.assert_close(parallel(x), model(x), rtol=0, atol=0)
    model(x).square().mean().backward()
    parallel(x).square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("path", ["", "blocks.1"])
def test_data_parallel_replication_is_a_clear_error(path):
    # torch.nn.parallel.replicate calls this on every module it copies (a GPU-only path)
    module = _model().get_submodule(path)
    with pytest.raises(RuntimeError, match="DistributedDataParallel"):
        module._replicate_for_data_parallel()
