"""Converted Hugging Face models stay Hugging Face models (issue 11)."""

from __future__ import annotations

import copy

import pytest
import torch

import mhc_fx
from tests.helpers import perturb_mixing

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 100


def tiny_gpt2() -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_bert() -> BertModel:
    config = BertConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=VOCAB,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


FACTORIES = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def perturb(model: torch.nn.Module, scale: float = 1.0, seed: int = 0) -> None:
    """Move every mixing logit off its init so that the sites really mix."""
    perturb_mixing(model, scale, seed)


def tokens(batch: int = 2, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokens(batch, length, seed=1)
    mask = torch.ones_like(ids)
    ids[0, :3] = 0
    mask[0, :3] = 0
    return ids, mask


@pytest.fixture(params=sorted(FACTORIES), scope="module")
def pair(request):
    torch.manual_seed(0)
    original = FACTORIES[request.param]()
    return original, mhc_fx.convert(original)


def test_class_and_hf_api_kept(pair):
    original, converted = pair
    assert type(converted) is type(original)
    assert isinstance(converted, type(original))
    assert converted.config is not original.config and converted.config.to_dict()["mhc_fx"]["mode"] == "mhc"
    assert converted.generation_config.pad_token_id == original.generation_config.pad_token_id
    # generate() reads the forward signature: it must be the original one.
    import inspect

    assert inspect.signature(converted.forward) == inspect.signature(original.forward)
    report = mhc_fx.explain(converted)
    assert report.capture == "export" and len(report.sites) == 6 and len(report.chains) == 1
    assert any("Hugging Face path" in note for note in report.notes)


def test_logits_and_generate_equal_at_init(pair):
    original, converted = pair
    ids, mask = left_padded()
    assert torch.equal(original(ids, attention_mask=mask).logits, converted(ids, attention_mask=mask).logits)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=0)
    greedy = original.generate(ids, do_sample=False, **kwargs)
    assert torch.equal(greedy, converted.generate(ids, do_sample=False, **kwargs))
    torch.manual_seed(3)
    sampled = original.generate(ids, do_sample=True, **kwargs)
    torch.manual_seed(3)
    assert torch.equal(sampled, converted.generate(ids, do_sample=True, **kwargs))


def test_cached_generation_matches_full_forward_with_perturbed_weights(pair):
    _, converted = pair
    model = copy.deepcopy(converted)
    perturb(model)
    ids, mask = left_padded()
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(seq.shape[0], seq.shape[1] - ids.shape[1], dtype=mask.dtype)], 1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp(min=0)
    full = model(seq, attention_mask=full_mask, position_ids=position_ids).logits
    for step, logits in enumerate(out.logits):
        pos = ids.shape[1] - 1 + step
        torch.testing.assert_close(logits, full[:, pos], rtol=1e-5, atol=1e-5)
    # the perturbation is real: the model no longer equals the original function
    assert not torch.allclose(model(seq).logits, converted(seq).logits)


def test_save_pretrained_round_trip(pair, tmp_path):
    original, converted = pair
    model = copy.deepcopy(converted)
    perturb(model, seed=5)
    model.save_pretrained(tmp_path)
    ids = tokens()
    expected = model(ids).logits
    reloaded = mhc_fx.from_pretrained(type(original), tmp_path).eval()
    assert type(reloaded) is type(original)
    assert torch.equal(reloaded(ids).logits, expected)
    # the manual path: original class, convert with the same options, load the state dict
    manual = mhc_fx.convert(type(original).from_pretrained(tmp_path)).eval()
    manual.load_state_dict(model.state_dict())
    assert torch.equal(manual(ids).logits, expected)
    # other options: a clear error, never a silent mismatch
    other = mhc_fx.convert(type(original).from_pretrained(tmp_path), mode="hc")
    with pytest.raises(ValueError, match="other mhc_fx options"):
        other.load_state_dict(model.state_dict())


def test_from_pretrained_rejects_a_plain_checkpoint(pair, tmp_path):
    original, _ = pair
    original.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not saved from a converted model"):
        mhc_fx.from_pretrained(type(original), tmp_path)


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids, use_cache=False).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(pair):
    _, converted = pair
    model = copy.deepcopy(converted).train()
    perturb(model, scale=0.5, seed=2)
    ids = tokens(2, 8)
    plain = _grads(model, ids)
    calls = []
    first_block = next(m for n, m in model.named_modules() if n.endswith("layers.0") or n.endswith("h.0"))
    mlp = first_block.mlp
    mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.gradient_checkpointing_enable()
    calls.clear()
    checkpointed = _grads(model, ids)
    assert len(calls) == 2, "the block must be recomputed in backward (checkpointing active)"
    assert plain.keys() == checkpointed.keys()
    assert any(n.startswith("mhc.") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-7, msg=name)


def test_reentrant_checkpointing_is_a_clear_error(pair):
    _, converted = pair
    model = copy.deepcopy(converted).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(NotImplementedError, match="use_reentrant"):
        model(tokens(), labels=tokens(), use_cache=False)


def test_no_state_survives_a_call(pair):
    _, converted = pair
    model = copy.deepcopy(converted)
    perturb(model)
    runtime = model.__dict__["_mhc_fx_runtime"]
    a, b = tokens(2, 6, seed=1), tokens(3, 9, seed=2)
    out_a = model(a).logits
    assert runtime.scope is None
    out_b = model(b).logits
    assert torch.equal(model(a).logits, out_a)
    fresh = copy.deepcopy(model)
    assert torch.equal(fresh(b).logits, out_b)
    # a deep copy answers to its own weights
    perturb(fresh, seed=9)
    assert not torch.equal(fresh(b).logits, out_b) and torch.equal(model(b).logits, out_b)


def test_to_dtype_and_train_eval(pair):
    original, converted = pair
    model = copy.deepcopy(converted).to(torch.float64)
    ids = tokens()
    reference = copy.deepcopy(original).to(torch.float64)(ids).logits
    assert torch.equal(model(ids).logits, reference)
    assert model.train().training and all(m.training for m in model.modules())
    assert not model.eval().training


def test_fullgraph_compile_has_no_graph_break(pair):
    _, converted = pair
    model = copy.deepcopy(converted).train()
    perturb(model, seed=4)
    ids = tokens()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(ids, use_cache=False)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(ids, use_cache=False).logits, model(ids, use_cache=False).logits)


def test_bert_keeps_class_outputs_and_masks():
    torch.manual_seed(0)
    original = tiny_bert()
    converted = mhc_fx.convert(original)
    assert type(converted) is BertModel
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 6 and len(report.chains) == 1  # post-norm: the chain runs through LayerNorms
    ids, mask = left_padded()
    a, b = original(ids, attention_mask=mask), converted(ids, attention_mask=mask)
    assert type(a) is type(b)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output, b.pooler_output)


@pytest.mark.parametrize("backend", ["inductor", "mhc"])
def test_compiled_static_cache_generation(backend):
    from transformers import CompileConfig

    torch.manual_seed(0)
    original = tiny_llama()
    converted = mhc_fx.convert(original)
    ids, mask = left_padded()
    config = CompileConfig(fullgraph=True, dynamic=False, backend=backend)
    config._compile_all_devices = True  # CPU: transformers compiles only on accelerators by default
    torch._dynamo.reset()
    out = converted.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
        cache_implementation="static",
        compile_config=config,
    )
    ref = original.generate(
        ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0, cache_implementation="static"
    )
    assert torch.equal(out, ref)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def tiny_t5():
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=2,
    )
    return transformers.T5ForConditionalGeneration(config).eval()


def test_encoder_decoder_t5_converts_and_generates():
    # the encoder and the decoder are two chains; generate() runs the encoder once and the
    # decoder step by step with its cache, each call with its own scope
    torch.manual_seed(0)
    original = tiny_t5()
    converted = mhc_fx.convert(original)
    report = mhc_fx.explain(converted)
    assert type(converted) is type(original) and len(report.sites) == 10 and len(report.chains) == 2
    ids, mask = left_padded()
    decoder_ids = tokens(length=4, seed=1)
    ref = original(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert torch.equal(ref, converted(ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits)
    kwargs = dict(attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(original.generate(ids, **kwargs), converted.generate(ids, **kwargs))
    model = copy.deepcopy(converted)
    perturb(model)
    out = model.generate(ids, **kwargs, output_logits=True, return_dict_in_generate=True)
    full = model(ids, attention_mask=mask, decoder_input_ids=out.sequences[:, :-1]).logits
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, full[:, step], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(ids, decoder_input_ids=decoder_ids).logits, ref)


def test_low_cpu_mem_usage_and_meta_loading_are_exact(pair, tmp_path):
    original, converted = pair
    cls, ids = type(original), tokens()
    original.save_pretrained(tmp_path / "plain")
    # HF materialises from the meta device, then convert
    loaded = mhc_fx.convert(cls.from_pretrained(tmp_path / "plain", low_cpu_mem_usage=True)).eval()
    assert torch.equal(loaded(ids).logits, original(ids).logits)
    # a converted checkpoint through mhc_fx.from_pretrained, the same way
    trained = copy.deepcopy(converted)
    perturb(trained, seed=6)
    trained.save_pretrained(tmp_path / "converted")
    reloaded = mhc_fx.from_pretrained(cls, tmp_path / "converted", low_cpu_mem_usage=True).eval()
    assert torch.equal(reloaded(ids).logits, trained(ids).logits)
    if cls is GPT2LMHeadModel:  # (Llama's rotary table is a non-persistent buffer to_empty leaves unset)
        with torch.device("meta"):
            meta = cls(original.config)
        materialised = mhc_fx.convert(meta).to_empty(device="cpu")
        materialised.load_state_dict(trained.state_dict(), strict=True)
        assert torch.equal(materialised.eval()(ids).logits, trained(ids).logits)


def test_layerdrop_trains_and_eval_is_exact():
    # Wav2Vec2 skips each layer with probability layerdrop while training: a site after a
    # skipped layer mixes the states the call produced (docs/troubleshooting.md)
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        layerdrop=0.5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        mask_time_prob=0.0,
    )
    original = Wav2Vec2Model(config).eval()
    audio = torch.randn(2, 400, generator=torch.Generator().manual_seed(1))
    model = mhc_fx.convert(original, example_inputs={"input_values": audio})
    assert max(s.history for s in mhc_fx.explain(model).sites) == 4
    assert torch.equal(model(audio).last_hidden_state, original(audio).last_hidden_state)
    perturb(model, seed=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(6):  # 6 calls, each with its own random set of skipped layers
        model(audio).last_hidden_state.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_parallel_residual_left_to_right_is_one_chain():
    # StableLM with use_parallel_residual writes `residual + attn + mlp`: both adds are sites of one chain
    from transformers import StableLmConfig, StableLmForCausalLM

    torch.manual_seed(0)
    config = StableLmConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        use_parallel_residual=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    original = StableLmForCausalLM(config).eval()
    model = mhc_fx.convert(original)
    report = mhc_fx.explain(model)
    assert len(report.chains) == 1 and [s.history for s in report.sites] == [1, 2, 3, 4, 4, 4]
    ids = tokens()
    assert torch.equal(model(ids).logits, original(ids).logits)
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, original.generate(ids, max_new_tokens=4, do_sample=False))


def test_a_reshaped_stream_keeps_its_chain():
    # OPT re-views (B, T, C) as (B*T, C) between its two residual adds and back: one chain
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=3,
        ffn_dim=32,
        num_attention_heads=2,
        max_position_embeddings=32,
        word_embed_proj_dim=16,
        dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    original = OPTForCausalLM(config).eval()
    model = mhc_fx.convert(original)
    assert [s.history for s in mhc_fx.explain(model).sites] == [1, 2, 3, 4, 4, 4]
    ids = tokens()
    assert torch.equal(model(ids).logits, original(ids).logits)
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, original.generate(ids, max_new_tokens=4, do_sample=False))
    perturb(model, seed=3)
    cached = model.generate(ids, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)
    full = model(cached.sequences[:, :-1]).logits[:, ids.shape[1] - 1 :]
    torch.testing.assert_close(torch.stack(cached.logits, 1), full, rtol=1e-5, atol=1e-5)
