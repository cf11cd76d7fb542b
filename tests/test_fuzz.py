"""Random residual architectures: convert never crashes, is exact at init, and accounts for every add."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mhc_fx
from tests.fuzz_models import KINDS, FuzzNet, expected_counts

architectures = st.tuples(
    st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=8),
    st.lists(st.integers(2, 6), min_size=1, max_size=3),
    st.booleans(),  # shapes known (example_inputs given) or not
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures, st.sampled_from(["residual", "mhc", "mhc-identity"]))
def test_random_architectures(arch, mode_name):
    kinds, widths, with_inputs = arch
    torch.manual_seed(0)
    model = FuzzNet(kinds, widths).eval()
    x = torch.randn(3, widths[0])
    options = {"mode": "mhc", "constraint": "identity"} if mode_name == "mhc-identity" else {"mode": mode_name}
    converted = mhc_fx.convert(model, example_inputs=(x,) if with_inputs else None, **options)
    report = mhc_fx.explain(converted)
    adds, sites = expected_counts(kinds)
    assert len(report.sites) == sites, str(report)
    assert len(report.sites) + len(report.skipped) == adds, str(report)
    assert all(s.reason for s in report.skipped)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    # a chain never mixes states of another width: each width change starts a new chain
    for chain in report.chains.values():
        assert len({s.shape for s in chain}) == 1
