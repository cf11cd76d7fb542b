"""Big models: convert on the meta device (no memory touched), then materialise."""

from __future__ import annotations

import torch

import mhc_fx
from tests.models.gpt import GPT


def test_convert_on_meta_then_to_empty_and_initialise():
    with torch.device("meta"):
        meta_model = GPT(layers=6, dim=32)
    converted = mhc_fx.convert(meta_model)
    assert {p.device.type for p in converted.parameters()} == {"meta"}
    assert len(mhc_fx.explain(converted).sites) == 12

    torch.manual_seed(0)
    reference = GPT(layers=6, dim=32)  # the same architecture, materialised normally
    materialised = converted.to_empty(device="cpu")
    materialised.mhc.reset_parameters()  # logits and the options record back to their init
    materialised.load_state_dict(reference.state_dict(), strict=False)
    x = torch.randint(0, 64, (2, 8))
    assert torch.equal(materialised(x), reference(x))
    # the record is valid again: a state dict round trip is accepted
    materialised.load_state_dict(materialised.state_dict())
