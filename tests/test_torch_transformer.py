"""torch's own nn.TransformerEncoder / Decoder / Transformer convert like user code.

Their layer forwards are rewritten (the only torch classes that are), and torch's fused
inference path, whose C++ kernel would add the residual where no site sees it, is switched
off on the converted copy (never on the original).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mhc_fx
from tests.helpers import perturb_mixing

D, HEADS, FF = 16, 2, 32


def _x(length: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, length, D, generator=torch.Generator().manual_seed(seed))


def _encoder(norm_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True, norm_first=norm_first)
    return nn.TransformerEncoder(layer, 2)


def _fast_path_flags(model: nn.Module) -> list:
    return [getattr(m, a, None) for m in model.modules() for a in ("activation_relu_or_gelu", "use_nested_tensor")]


@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_encoder_sites_exact_and_fast_path_off(norm_first):
    original = _encoder(norm_first)
    flags = _fast_path_flags(original)
    x = _x()
    converted = mhc_fx.convert(original, example_inputs=(x,))
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 4 and len(report.chains) == 1  # 2 per layer, one chain (post-norm: through the norms)
    assert any("fused Transformer inference path switched off" in note for note in report.notes)
    assert _fast_path_flags(original) == flags  # the original keeps its fast path
    for mode in ("train", "eval"):
        getattr(original, mode)(), getattr(converted, mode)()
        with torch.no_grad():
            assert torch.equal(original(x), converted(x)), mode
    # with mixing that really mixes, inference (no_grad, eval: where torch would take its fused
    # path) computes what training computes
    mixed = perturb_mixing(copy.deepcopy(converted), 0.5)
    trained_view = mixed.train()(x)
    with torch.no_grad():
        inferred = mixed.eval()(x)
    torch.testing.assert_close(inferred, trained_view, rtol=0, atol=1e-6)
    assert not torch.allclose(trained_view, original.train()(x), atol=1e-4)


def test_encoder_with_padding_mask_runs_the_regular_path():
    original = _encoder(False)
    x, mask = _x(), torch.zeros(2, 5, dtype=torch.bool)
    mask[1, -2:] = True
    converted = mhc_fx.convert(original, example_inputs=(x,)).eval()
    with torch.no_grad():
        out = converted(x, src_key_padding_mask=mask)
        fast = original.eval()(x, src_key_padding_mask=mask)  # nested tensors: zeros where padded
    assert torch.equal(out, original.train()(x, src_key_padding_mask=mask))
    torch.testing.assert_close(out[~mask], fast[~mask], rtol=0, atol=1e-5)


def test_full_transformer_has_an_encoder_and_a_decoder_chain():
    torch.manual_seed(0)
    original = nn.Transformer(D, HEADS, 2, 2, FF, dropout=0.0, batch_first=True)
    src, tgt = _x(), _x(4, seed=1)
    converted = mhc_fx.convert(original, example_inputs=(src, tgt))
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 10 and sorted(len(c) for c in report.chains.values()) == [4, 6]
    causal = nn.Transformer.generate_square_subsequent_mask(4)
    for mode in ("train", "eval"):
        getattr(original, mode)(), getattr(converted, mode)()
        with torch.no_grad():
            assert torch.equal(original(src, tgt, tgt_mask=causal), converted(src, tgt, tgt_mask=causal))


def test_encoder_without_example_inputs_names_the_fix():
    with pytest.raises(ValueError, match=r"torch.fx cannot trace TransformerEncoder .*example_inputs"):
        mhc_fx.convert(_encoder(False))


class _AttnBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ff = nn.Linear(D, D)

    def forward(self, x):
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return x + self.ff(x)


def test_other_torch_modules_stay_library_code():
    # the user's adds around nn.MultiheadAttention are sites; MHA's own forward is not rewritten
    torch.manual_seed(0)
    x = _x()
    converted = mhc_fx.convert(_AttnBlock(), example_inputs=(x,))
    assert len(mhc_fx.explain(converted).sites) == 2
    assert "forward" in converted.__dict__ and "forward" not in converted.attn.__dict__


def test_layers_in_a_plain_container_are_traced_through_not_leaves():
    # fx treats torch modules as leaves: the encoder layers must be traced into, or their
    # adds would be invisible and the model silently returned without sites
    torch.manual_seed(0)
    layers = [nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True) for _ in range(3)]
    original = nn.Sequential(*layers).eval()
    with pytest.raises(ValueError, match="example_inputs"):
        mhc_fx.convert(original)  # fx cannot trace the layer itself
    x = _x()
    converted = mhc_fx.convert(original, example_inputs=(x,)).eval()
    report = mhc_fx.explain(converted)
    assert len(report.sites) == 6 and len(report.chains) == 1
    with torch.no_grad():
        assert torch.equal(original(x), converted(x))
