"""peft's LoRA and mhc_fx in either order: get_peft_model(convert(m)) and convert(get_peft_model(m))."""

from __future__ import annotations

import pytest
import torch

import mhc_fx
from tests.helpers import perturb_mixing

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

VOCAB = 64


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(config).eval()


def lora(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    return peft.get_peft_model(model, config)


def ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))


def test_convert_a_peft_model_without_example_inputs():
    original = lora(tiny_llama())
    model = mhc_fx.convert(original)  # the inputs are built from the Llama the PeftModel wraps
    assert type(model) is type(original)
    report = mhc_fx.explain(model)
    assert [s.history for s in report.sites] == [1, 2, 3, 4]
    assert any("peft path" in note for note in report.notes)
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, original(input_ids=x).logits)
    generated = model.generate(input_ids=x, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, original.generate(input_ids=x, max_new_tokens=4, do_sample=False))
    # the LoRA adapters and the mixing logits train; the frozen base does not
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any(n.startswith("mhc.") for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)


def test_peft_around_a_converted_model_is_found_by_explain_and_inspection():
    converted = mhc_fx.convert(tiny_llama())
    model = lora(converted)
    # explain and mixing_weights find the converted model inside the PeftModel
    assert mhc_fx.explain(model) is mhc_fx.explain(converted)
    assert set(mhc_fx.mixing_weights(model)) == {s.name for s in mhc_fx.explain(converted).sites}
    with pytest.raises(ValueError, match="converted by mhc_fx already"):
        mhc_fx.convert(model)
    # peft freezes what it does not adapt, the mixing logits included: a user re-enables them
    mixing = [p for n, p in model.named_parameters() if ".mhc." in n]
    assert mixing and not any(p.requires_grad for p in mixing)
    for p in mixing:
        p.requires_grad_(True)
    perturb_mixing(converted, 0.5, seed=2)
    out = model(input_ids=ids(), labels=ids())
    out.loss.backward()
    # every logit reaches the loss (a site whose projected weights sit on a vertex has a zero gradient)
    assert all(p.grad is not None for p in mixing) and sum(float(p.grad.abs().sum()) for p in mixing) > 0
