"""Big models: convert on the meta device (no memory touched), then materialise and load, in the
order HF (low_cpu_mem_usage), accelerate's init_empty_weights and torchtitan use: no extra call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mhc_fx
from tests.helpers import perturb_mixing
from tests.models.gpt import GPT


def _meta_gpt() -> nn.Module:
    with torch.device("meta"):
        return GPT(layers=6, dim=32)


def test_convert_on_meta_then_to_empty_and_load_the_original_weights():
    converted = mhc_fx.convert(_meta_gpt())
    assert {p.device.type for p in converted.parameters()} == {"meta"}
    assert len(mhc_fx.explain(converted).sites) == 12

    torch.manual_seed(0)
    reference = GPT(layers=6, dim=32)  # the same architecture, materialised normally
    materialised = converted.to_empty(device="cpu")  # the logits and the record go back to their init
    result = materialised.load_state_dict(reference.state_dict(), strict=False)
    assert result.missing_keys and all(k.startswith("mhc.") for k in result.missing_keys)
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(materialised(x), reference(x))
    # the record is valid: a state dict round trip is accepted, and reset_parameters still works
    materialised.load_state_dict(materialised.state_dict())
    materialised.mhc.reset_parameters()
    assert torch.equal(materialised(x), reference(x))


def test_convert_on_meta_then_load_a_converted_checkpoint_strictly():
    torch.manual_seed(0)
    trained = perturb_mixing(mhc_fx.convert(GPT(layers=6, dim=32)), seed=3)
    materialised = mhc_fx.convert(_meta_gpt()).to_empty(device="cpu")
    materialised.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(materialised(x), trained(x))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(8, 8)

    def forward(self, x):
        return x + self.f(x)


def test_container_root_on_meta_needs_no_extra_call():
    # a Sequential root holds the mhc.* entries itself (no child module): same guarantees
    torch.manual_seed(0)
    reference = nn.Sequential(*(_Residual() for _ in range(3)))
    with torch.device("meta"):
        meta = nn.Sequential(*(_Residual() for _ in range(3)))
    materialised = mhc_fx.convert(meta).to_empty(device="cpu")
    materialised.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randn(2, 8)
    assert torch.equal(materialised(x), reference(x))
    trained = perturb_mixing(mhc_fx.convert(reference), seed=2)
    materialised.load_state_dict(trained.state_dict(), strict=True)
    assert torch.equal(materialised(x), trained(x))


def test_a_record_that_is_not_one_is_a_clear_error():
    model = mhc_fx.convert(GPT(layers=2, dim=16))
    state = model.state_dict()
    state["mhc.config_record"] = torch.full_like(state["mhc.config_record"], 255)  # not UTF-8
    with pytest.raises(ValueError, match="not an mhc_fx record"):
        model.load_state_dict(state)
