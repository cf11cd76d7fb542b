"""Shared test settings: a deterministic torch seed and a hypothesis profile
sized so the property tests stay quick on a small CPU machine."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "mhc_fx",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile("thorough", parent=settings.get_profile("mhc_fx"), max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mhc_fx"))


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
    yield
