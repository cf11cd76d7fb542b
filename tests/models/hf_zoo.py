"""Tiny random Hugging Face models for the convert tests (nothing is downloaded).

Each entry is a `tests.models.zoo.ZooEntry`: a factory (fixed-seed random weights,
dropout 0 for determinism), fixed-seed example inputs (positional) plus keyword
inputs (``attention_mask=`` for the text models), and the TRUE site count and
chain lengths counted from the architecture (comment on each entry).

`gpt2_with_dropout()` builds a GPT-2 with dropout > 0 for the train-mode test.
"""

from __future__ import annotations

import torch

from .zoo import SEED, ZooEntry, _gen

try:
    import transformers
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.resnet.modeling_resnet import ResNetBasicLayer
    from transformers.models.t5.modeling_t5 import T5Block
    from transformers.models.vit.modeling_vit import ViTLayer
except ImportError:  # pragma: no cover - transformers is a test extra
    transformers = None

VOCAB, BATCH, LENGTH = 64, 2, 8


def _seeded(build):
    def make():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model = build()
        return model

    return make


def _gpt2_config(dropout: float = 0.0):
    return transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_inner=32,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=0,
        eos_token_id=0,
    )


def gpt2_with_dropout(p: float = 0.2):
    """A GPT2Model whose residual, embedding and attention dropouts are ``p``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return transformers.GPT2Model(_gpt2_config(p))


def _bert():
    return transformers.BertModel(
        transformers.BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _llama():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
            attention_dropout=0.0,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
    )


def _vit():
    return transformers.ViTModel(
        transformers.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=3,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _resnet():
    return transformers.ResNetModel(
        transformers.ResNetConfig(
            num_channels=3,
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[2, 3],
            layer_type="basic",
            hidden_act="relu",
        )
    )


def _t5():
    return transformers.T5ForConditionalGeneration(
        transformers.T5Config(
            vocab_size=VOCAB,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _gpt_neox():
    return transformers.GPTNeoXForCausalLM(
        transformers.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


def _decoder_ids():
    return {"decoder_input_ids": torch.randint(0, VOCAB, (BATCH, LENGTH - 3), generator=_gen(1))}


def _ids():
    return (torch.randint(0, VOCAB, (BATCH, LENGTH), generator=_gen()),)


def _mask():
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[1, -2:] = 0  # right padding on the second row
    return {"attention_mask": mask}


def _pixels():
    return (torch.randn(BATCH, 3, 8, 8, generator=_gen()),)


HF_ZOO: list[ZooEntry] = []
if transformers is not None:
    HF_ZOO = [
        # GPT2Block: attn_output + residual, residual + mlp = 2 sites x 2 layers = 4,
        # ONE chain of 4. Not sites: wte + wpe, and the tanh-GELU's x + 0.044715 x^3.
        ZooEntry(
            "hf_gpt2",
            _seeded(lambda: transformers.GPT2Model(_gpt2_config())),
            _ids,
            4,
            (4,),
            "wte",
            "input_ids",
            kwargs=_mask,
            hf=True,
            block_class=GPT2Block,
        ),
        ZooEntry(
            "hf_gpt2_lm",
            _seeded(lambda: transformers.GPT2LMHeadModel(_gpt2_config())),
            _ids,
            4,
            (4,),
            "transformer.wte",
            "input_ids",
            kwargs=_mask,
            hf=True,
            block_class=GPT2Block,
        ),
        # BERT (post-norm): BertSelfOutput LN(h + input) and BertOutput LN(h + input) =
        # 2 sites x 2 layers = 4, ONE chain of 4 through the LayerNorms. Not sites: the
        # word + token-type + position embedding adds.
        ZooEntry(
            "hf_bert",
            _seeded(_bert),
            _ids,
            4,
            (4,),
            "embeddings.word_embeddings",
            "input_ids",
            kwargs=_mask,
            hf=True,
            block_class=BertLayer,
        ),
        # Llama (pre-RMSNorm): residual + attn, residual + mlp = 2 x 2 layers = 4, ONE chain.
        # Not sites: the rotary q*cos + rotate_half(q)*sin (neither operand from the other).
        ZooEntry(
            "hf_llama",
            _seeded(_llama),
            _ids,
            4,
            (4,),
            "model.embed_tokens",
            "input_ids",
            kwargs=_mask,
            hf=True,
            block_class=LlamaDecoderLayer,
        ),
        # ViT: attention_output + hidden, hidden + mlp = 2 x 2 layers = 4, ONE chain. Not a
        # site: embeddings + position_embeddings.
        ZooEntry(
            "hf_vit",
            _seeded(_vit),
            _pixels,
            4,
            (4,),
            "embeddings.patch_embeddings.projection",
            "pixel_values",
            hf=True,
            block_class=ViTLayer,
        ),
        # T5 (encoder-decoder, pre-RMSNorm): encoder layers add attention and FF (2 x 2 = 4,
        # one chain from the token embeddings); decoder layers add self-attention,
        # cross-attention and FF (3 x 2 = 6, a second chain from the decoder's embeddings).
        ZooEntry(
            "hf_t5",
            _seeded(_t5),
            _ids,
            10,
            (4, 6),
            "shared",
            "input_ids",
            kwargs=_decoder_ids,
            hf=True,
            block_class=T5Block,
        ),
        # GPT-NeoX (parallel residual): x + attn(ln1 x) + mlp(ln2 x). Per layer one site:
        # the add whose operand is the stream; the attn + mlp add is not a site (neither
        # operand comes from the other). 2 sites, one chain.
        ZooEntry(
            "hf_gpt_neox",
            _seeded(_gpt_neox),
            _ids,
            2,
            (2,),
            "gpt_neox.embed_in",
            "input_ids",
            kwargs=_mask,
            hf=True,
            block_class=GPTNeoXLayer,
        ),
        # ResNet (basic, embedding 8, hidden [8, 16], depths [2, 3]): stage 0 keeps 8 channels
        # and stride 1, so both layers have an Identity shortcut (2 sites, one chain); stage 1's
        # first layer has a projection shortcut (8 -> 16, stride 2): NOT a site, the chain
        # restarts; its layers 1 and 2 are sites (chain of 2). Total 4 sites, chains (2, 2).
        ZooEntry(
            "hf_resnet",
            _seeded(_resnet),
            _pixels,
            4,
            (2, 2),
            "embedder.embedder.convolution",
            "pixel_values",
            hf=True,
            block_class=ResNetBasicLayer,
        ),
    ]
