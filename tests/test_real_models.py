"""`mhc_fx.convert` on models nobody here wrote: timm, torchvision, transformers, diffusers, peft.

The entries are in `tests/models/real_zoo.py`: tiny configurations of the real classes with
random weights, the ideal sites and chains counted from each architecture, what today's
mhc_fx finds where it falls short (``now``) and the failure class behind it. For every entry:
convert (``mode="mhc"``) without error; exact at init (``torch.equal`` of every output, eval);
the ideal sites and chains (``xfail(strict=True)`` while ``now`` differs, so a fix flips it);
today's record (a regression fails); mixing parameters wherever consecutive residual blocks
share a stream; one SGD step moves the ``mhc.*`` parameters; another input shape runs and
stays exact; conversion without ``example_inputs=`` where fx should manage; and for a few,
``torch.compile(backend="mhc")`` equals eager with 0 graph breaks.

A small representative set runs by default; the rest is ``@pytest.mark.slow``
(``python -m pytest -m slow tests/test_real_models.py``). The table of docs/convert.md comes
from ``python -m tests.models.real_zoo --table``.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import mhc_fx
from tests.helpers import perturb_mixing
from tests.models.real_zoo import (
    BY_NAME,
    REAL_ZOO,
    RealEntry,
    available,
    call,
    convert,
    float_outputs,
    live_sites,
    mhc_params,
    perturb_weights,
)

CLASS = {
    0: "outside the known classes (see the entry in tests/models/real_zoo.py)",
    1: "class 1: a reshape / view / permute of the stream between two sites ends the chain",
    2: "class 2: the residual add lives in a helper function / another method / a callable object",
    3: "class 3: parallel residual spelled left to right",
    4: "class 4: method spellings of the add",
    5: "class 5: a broadcasting add taken as a site (fx without shapes)",
    6: "class 6: LayerDrop in training",
    7: "class 7: source-rewrite robustness",
    9: "class 9: inputs mhc_fx does not build (pixel_values + input_ids, audio, peft)",
}


def _reason(classes) -> str:
    return "; ".join(CLASS.get(c, f"class {c}") for c in classes)


def params(test: str, select=lambda e: True, xfail=lambda e: None, default=lambda e: e.default):
    out = []
    for entry in REAL_ZOO:
        if not select(entry):
            continue
        marks = [] if default(entry) else [pytest.mark.slow]
        if not available(entry.family):
            marks.append(pytest.mark.skip(reason=f"{entry.family} is not importable (pip install -e '.[test]')"))
        reason = xfail(entry)
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        out.append(pytest.param(entry, id=f"{entry.family}-{entry.name}", marks=marks))
    return out


@functools.lru_cache(maxsize=None)
def _pair(key: str):
    entry = BY_NAME[key]
    original = entry.make()
    with torch.random.fork_rng(devices=[]):
        converted = convert(entry, original)
    return original, converted


def pair(entry: RealEntry):
    return _pair(f"{entry.family}/{entry.name}")


def report_of(model) -> mhc_fx.Report:
    return mhc_fx.explain(model if mhc_fx.is_converted(model) else model.get_base_model())


def assert_equal_outputs(got, want) -> None:
    g, w = float_outputs(got), float_outputs(want)
    assert len(g) == len(w) > 0
    for a, b in zip(g, w):
        assert a.shape == b.shape and torch.equal(a, b), f"max abs diff {(a - b).abs().max().item()}"


# -----------------------------------------------------------------------------
@pytest.mark.parametrize("entry", params("exact"))
def test_converts_and_is_exact_at_init(entry):
    original, converted = pair(entry)
    x = entry.call_inputs()
    with torch.no_grad():
        assert_equal_outputs(call(converted.eval(), x), call(original.eval(), x))


@pytest.mark.parametrize("entry", params("ideal", xfail=lambda e: _reason(e.classes) if e.now else None))
def test_ideal_sites_and_chains(entry):
    report = report_of(pair(entry)[1])
    found = (len(report.sites), tuple(len(c) for c in report.chains.values()))
    assert found == (entry.sites, entry.chains), str(report)


@pytest.mark.parametrize("entry", params("today"))
def test_sites_and_chains_as_recorded(entry):
    """What today's mhc_fx finds (``now``, or the ideal): a change either way must update the record."""
    original, converted = pair(entry)
    report = report_of(converted)
    assert (len(report.sites), tuple(len(c) for c in report.chains.values())) == entry.today, str(report)
    windows = [s.history for s in report.sites]
    assert sum(k >= 2 for k in windows) == entry.mixing_today
    assert len(mhc_params(converted)) == entry.mixing_today
    if entry.sites == 0:
        assert "no residual site" in str(report)


def _mixing_xfail(entry: RealEntry):
    if entry.mixing_today == 0:
        return _reason(entry.classes) + ": every chain holds one site"
    if entry.dead is not None:
        return _reason([entry.dead]) + ": mixing weights exist that the output ignores"
    return None


@pytest.mark.parametrize("entry", params("mixing", select=lambda e: e.mixing > 0, xfail=_mixing_xfail))
def test_has_live_mixing_parameters(entry):
    """Consecutive residual blocks on one stream: some site mixes two or more states, and every
    such site's weights act (perturbing them alone changes the output): no silent no-op."""
    _, converted = pair(entry)
    found = mhc_params(converted)
    assert found, str(report_of(converted))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in found.values())
    live = live_sites(converted, entry.call_inputs())
    assert live == len(found), f"{len(found) - live} of {len(found)} sites' mixing weights do not act on the output"


def _train_xfail(entry: RealEntry):
    if entry.mixing_today == 0:
        return _reason(entry.classes) + ": no mixing parameter to train"
    if entry.dead is not None:
        return _reason([entry.dead]) + ": the mixing weights get no gradient"
    if entry.train_class:
        return _reason([entry.train_class])
    return None


@pytest.mark.parametrize("entry", params("train", select=lambda e: e.mixing > 0, xfail=_train_xfail))
def test_training_step_moves_mixing(entry):
    _, converted = pair(entry)
    model = copy.deepcopy(converted)
    perturb_weights(model)  # zero-initialised branches / heads: see perturb_weights
    model.train()
    before = {n: p.detach().clone() for n, p in mhc_params(model).items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01)
    for step in range(4):  # several calls: LayerDrop skips a random set of layers in each
        torch.manual_seed(step)
        out = call(model, entry.call_inputs())
        loss = sum(t.float().square().mean() for t in float_outputs(out))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad()
    after = mhc_params(model)
    moved = [n for n, p in after.items() if not torch.equal(p.detach(), before[n])]
    assert moved, "no mhc.* parameter moved"
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("entry", params("shape"))
def test_second_input_shape(entry):
    original, converted = pair(entry)
    x = entry.second() if entry.second is not None else entry.call_inputs(3)
    with torch.no_grad():
        assert_equal_outputs(call(converted.eval(), x), call(original.eval(), x))


@pytest.mark.parametrize(
    "entry",
    params(
        "no_example",
        select=lambda e: e.example and e.needs_example != 0,
        xfail=lambda e: _reason([e.needs_example]) if e.needs_example else None,
    ),
)
def test_converts_without_example_inputs(entry):
    """What a user who passes nothing gets: fx without shapes, or Hugging Face's own inputs."""
    original = pair(entry)[0]
    converted = convert(entry, entry.make(), with_example=False)
    x = entry.call_inputs()
    with torch.no_grad():
        assert_equal_outputs(call(converted.eval(), x), call(original.eval(), x))


@pytest.mark.parametrize(
    "entry", params("compile", select=lambda e: e.compile, default=lambda e: e.compile == "default")
)
def test_compile_matches_eager_without_graph_breaks(entry):
    _, converted = pair(entry)
    model = perturb_mixing(copy.deepcopy(converted), scale=1.0, seed=3).eval()
    x = entry.call_inputs()
    torch._dynamo.reset()
    args, kwargs = ((), x) if isinstance(x, dict) else (x, {})
    explanation = torch._dynamo.explain(model)(*args, **kwargs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="mhc")
    with torch.no_grad():
        got, want = float_outputs(call(compiled, x)), float_outputs(call(model, x))
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)
    torch._dynamo.reset()


@pytest.mark.parametrize("entry", params("projected", select=lambda e: e.projected is not None))
def test_auto_project_carries_chains_across_projection_shortcuts(entry):
    original = entry.make()
    converted = convert(entry, original, auto_project=True)
    x = entry.call_inputs()
    with torch.no_grad():
        assert_equal_outputs(call(converted.eval(), x), call(original.eval(), x))
    report = report_of(converted)
    assert tuple(len(c) for c in report.chains.values()) == entry.projected, str(report)
    # (a model whose projection sites all start new chains, DLA's trees, has no maps to train)
    maps = {n: p for n, p in converted.named_parameters() if n.endswith("_project")}
    perturb_mixing(converted)  # the older states weigh something: the maps get gradients
    loss = sum(t.float().square().mean() for t in float_outputs(call(converted.train(), x)))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in maps.values()), list(maps)
