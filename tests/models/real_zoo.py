"""Models nobody here wrote: timm, torchvision, Hugging Face transformers, diffusers, peft.

Every entry is a `RealEntry`: a factory (a tiny configuration of the real class, a fixed
seed, dropout and drop-path 0, random weights, nothing downloaded), the inputs of a call,
and the sites and chains an IDEAL conversion with the default options finds, counted from
the architecture (the comment above each entry says how). Where today's mhc_fx finds
something else, ``now`` records what it finds (sites, chain lengths) and ``classes`` the
failure classes of the issue "`convert` on the models people have" that explain the gap:

    1  a reshape / view / permute of the stream between two sites ends the chain
    2  the residual add lives in a helper function, another method, a callable object (fixed:
       convert follows the calls into the model's own code)
    3  parallel residual spelled left to right ``x + attn(h) + mlp(h)``
    4  method spellings ``x.add(f(x))``, ``h.add_(x)``, ``torch.add(a, b, alpha=...)``
    5  broadcasting adds taken as sites crash at the first call (fx without shapes)
    6  LayerDrop crashes in training
    7  source-rewrite robustness (name mangling, closures, decorators)
    9  multimodal / audio inputs and peft needed ``example_inputs=`` (fixed: mhc_fx builds them)
    10 ResNet-style stages restart their chain at each projection shortcut

Class 10 is what the default options do by design: a projection shortcut starts a new chain.
``auto_project=True`` carries the chain across it through a learned map of the older states;
``projected`` records the chains it gives (asserted, exact at init, by the tests).

``tests/test_real_models.py`` asserts the ideal (``xfail(strict=True)`` where ``now`` differs,
so a fix flips it) and today's record (so a regression shows). ``python -m tests.models.real_zoo
--table`` converts every entry and prints the markdown table of docs/convert.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib
import sys
import time
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

SEED = 1234
VOCAB = 64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    @functools.wraps(build)
    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            return build().eval()

    return make


@dataclasses.dataclass(frozen=True)
class RealEntry:
    family: str  # timm / torchvision / transformers / diffusers / peft
    name: str
    make: Callable[[], nn.Module]
    inputs: Callable[[int], tuple | dict]  # inputs(batch): a tuple of args or a dict of kwargs
    sites: int  # the ideal conversion (see the comment on each entry)
    chains: tuple[int, ...]  # ideal chain lengths, in execution order
    now: tuple[int, tuple[int, ...]] | None = None  # (sites, chains) today, when not the ideal
    classes: tuple[int, ...] = ()  # failure classes behind ``now``
    train_class: int | None = None  # a failure class that breaks the training step today
    dead: int | None = None  # failure class when the mixing weights exist but do not act today
    example: bool = True  # pass example_inputs= (False: a Hugging Face model builds its own)
    needs_example: int | None = None  # the failure class when convert without example_inputs fails
    second: Callable[[], tuple | dict] | None = None  # inputs of another shape
    zero_init: bool = False  # residual branches start at zero (the training test perturbs every model)
    default: bool = False  # in the fast default test set (else @pytest.mark.slow)
    compile: bool | str = False  # torch.compile(backend="mhc") against eager ("default": also in the fast set)
    limits: str = ""  # what it loses by design (not a failure class)
    projected: tuple[int, ...] | None = None  # chains with auto_project=True (class 10 models)
    setup: Callable[[nn.Module], nn.Module] | None = None  # applied after convert (peft)

    def __repr__(self) -> str:
        return self.name

    @property
    def mixing(self) -> int:
        """Sites with a window of two or more states in the ideal conversion (max_history 4)."""
        return sum(max(0, n - 1) for n in self.chains)

    @property
    def today(self) -> tuple[int, tuple[int, ...]]:
        return self.now if self.now is not None else (self.sites, self.chains)

    @property
    def mixing_today(self) -> int:
        return sum(max(0, n - 1) for n in self.today[1])

    def call_inputs(self, batch: int = 2) -> tuple | dict:
        return self.inputs(batch)


def call(model: nn.Module, inputs: tuple | dict):
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


def float_outputs(out) -> list[torch.Tensor]:
    """The floating tensors of an output (tensor, tuple, ModelOutput / dataclass), caches ignored."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in float_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in float_outputs(v)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in float_outputs(getattr(out, f.name))]
    return []


def mhc_params(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if n.startswith("mhc.") or ".mhc." in n}


def perturb_weights(model: nn.Module, scale: float = 0.05, seed: int = 7) -> nn.Module:
    """Move every original weight (not ``mhc.*``) by seeded noise. Zero-initialised branches
    (timm's zero_init_last: every state of a chain equal, the mixing gradient exactly zero) and
    zero-initialised heads (timm's Mixer: a constant output) hide what the mixing does."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not (name.startswith("mhc.") or ".mhc." in name):
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def mixing_is_live(converted: nn.Module, x: tuple | dict, names: list[str] | None = None) -> bool:
    """Perturbed ``mhc.*`` logits (all, or those in ``names``) change the output (eval, weights
    perturbed first): those sites really mix."""
    base = perturb_weights(copy.deepcopy(converted)).eval()
    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in mhc_params(model).items():
            if names is None or name in names:
                p.add_(torch.randn(p.shape, generator=g))
        want, got = float_outputs(call(base, x)), float_outputs(call(model, x))
    return any(not torch.equal(a, b) for a, b in zip(want, got))


def live_sites(converted: nn.Module, x: tuple | dict) -> int:
    """How many sites' mixing weights act on the output, perturbing one site at a time."""
    return sum(mixing_is_live(converted, x, [name]) for name in mhc_params(converted))


def convert(entry: RealEntry, model: nn.Module, with_example: bool | None = None, **options) -> nn.Module:
    import mhc_fx

    use = entry.example if with_example is None else with_example
    kwargs = dict(options)
    if use:
        x = entry.call_inputs()
        kwargs["example_inputs"] = x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = mhc_fx.convert(model, mode="mhc", **kwargs)
    return entry.setup(converted) if entry.setup is not None else converted


# -----------------------------------------------------------------------------
# inputs
# -----------------------------------------------------------------------------
def images(size: int = 32, channels: int = 3) -> Callable[[int], tuple]:
    return lambda batch=2: (torch.randn(batch, channels, size, size, generator=_gen()),)


def tokens(length: int = 8, **extra) -> Callable[[int], dict]:
    def make(batch: int = 2) -> dict:
        n = length if batch == 2 else length - 3
        out = {"input_ids": torch.randint(0, VOCAB, (batch, n), generator=_gen())}
        for key, value in extra.items():
            out[key] = value(batch, n)
        return out

    return make


def _decoder_ids(batch: int, n: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, max(2, n - 3)), generator=_gen(1))


def _no_cache(batch: int, n: int) -> bool:
    return False


def _second(inputs: Callable[[int], tuple | dict]) -> Callable[[], tuple | dict]:
    return lambda: inputs(3)


# -----------------------------------------------------------------------------
# timm
# -----------------------------------------------------------------------------
def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)

    return _seeded(build)


def _timm_cls(path: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        module, cls = path.split(":")
        resolved = {k: (v() if callable(v) and getattr(v, "_lazy", False) else v) for k, v in kwargs.items()}
        return getattr(importlib.import_module(f"timm.models.{module}"), cls)(num_classes=10, **resolved)

    return _seeded(build)


def _lazy(fn):
    fn._lazy = True
    return fn


def _attr(path: str):
    """``timm.models.<module>:<name>`` resolved when the model is built (timm stays a lazy import)."""
    return _lazy(lambda: getattr(importlib.import_module(f"timm.models.{path.split(':')[0]}"), path.split(":")[1]))


def _timm_maxxvit(cfg_name: str, **changes) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from timm.models import maxxvit

        cfg = dataclasses.replace(maxxvit.model_cfgs[cfg_name], **changes)
        return maxxvit.MaxxVit(cfg, img_size=64, num_classes=10)

    return _seeded(build)


def _timm_efficientnet() -> nn.Module:
    from timm.models import efficientnet

    return efficientnet._gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, num_classes=10)


def _timm_nfnet() -> nn.Module:
    from timm.models import nfnet

    cfg = dataclasses.replace(
        nfnet.model_cfgs["test_nfnet"], depths=(1, 2, 2, 1), channels=(16, 32, 48, 64), stem_chs=16
    )
    return nfnet.NormFreeNet(cfg, num_classes=10)


def _timm_dla() -> nn.Module:
    from timm.models import dla

    return dla.DLA(levels=[1, 1, 1, 2, 2, 1], channels=[4, 8, 16, 32, 64, 128], block=dla.DlaBasic, num_classes=10)


def _timm_densenet() -> nn.Module:
    from timm.models import densenet

    return densenet.DenseNet(growth_rate=4, block_config=(2, 2, 2, 2), stem_type="", num_classes=10)


def _metaformer_poolformer() -> nn.Module:
    from timm.models.metaformer import GroupNorm1, MetaFormer

    return MetaFormer(
        depths=(2, 2, 2, 2),
        dims=(8, 16, 24, 32),
        downsample_norm=None,
        mlp_act=nn.GELU,
        mlp_bias=True,
        norm_layers=GroupNorm1,
        layer_scale_init_values=1e-5,
        res_scale_init_values=None,
        use_mlp_head=False,
        num_classes=10,
    )


TIMM: list[RealEntry] = [
    # BasicBlock ResNet-18 (depths 2-2-2-2), tiny widths, deep stem of 2x4 = 8 channels = stage 1's
    # width: stage 1's two blocks have identity shortcuts (2 sites, one chain); stages 2-4 start
    # with a projection shortcut (not a site, the chain restarts) then 1 identity block each.
    # 5 sites, chains 2-1-1-1. zero_init_last: every branch ends in a zero BN at init.
    RealEntry(
        "timm",
        "resnet18",
        _timm("resnet18", channels=(8, 16, 32, 64), stem_type="deep", stem_width=4),
        images(),
        5,
        (2, 1, 1, 1),
        zero_init=True,
        default=True,
        limits="class 10: a projection shortcut at each stage start restarts the chain",
        projected=(8,),
    ),
    # Bottleneck ResNet-50 depths 3-4-6-3: each stage's first block projects, the other
    # 2 + 3 + 5 + 2 = 12 blocks are identity sites, one chain per stage.
    RealEntry(
        "timm",
        "resnet50",
        _timm("resnet50", channels=(4, 8, 16, 32), stem_type="deep", stem_width=4),
        images(),
        12,
        (2, 3, 5, 2),
        zero_init=True,
        limits="class 10",
        projected=(16,),
    ),
    # ConvNeXt depths 2-2-2-2: one residual per block (the branch is permuted back to NCHW,
    # the stream keeps its layout) = 8; the downsampling layer between stages ends each chain.
    RealEntry(
        "timm",
        "convnext",
        _timm("convnext_atto", depths=(2, 2, 2, 2), dims=(8, 16, 32, 64)),
        images(),
        8,
        (2, 2, 2, 2),
    ),
    # ViT, 3 pre-norm blocks x (attention + MLP) = 6 sites, one chain (cls token + pos embed are not sites).
    RealEntry(
        "timm",
        "vit",
        _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2),
        images(),
        6,
        (6,),
        default=True,
        compile=True,
    ),
    # DeiT (distilled: cls + dist tokens), 3 blocks x 2 = 6, one chain.
    RealEntry(
        "timm",
        "deit",
        _timm("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2),
        images(),
        6,
        (6,),
    ),
    # Swin depths 2-2 (window 4 on an 8x8 map): 4 blocks x (window attention + MLP) = 8 sites, a
    # chain per stage (patch merging changes the shape) = 4-4. The block reshapes its NHWC
    # stream to tokens between its two adds and back after: the chain must survive that (class 1).
    RealEntry(
        "timm",
        "swin",
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            embed_dim=8,
            depths=(2, 2),
            num_heads=(2, 2),
            window_size=4,
            drop_path_rate=0.0,
        ),
        images(),
        8,
        (4, 4),
        default=True,
        compile=True,
    ),
    # MaxViT (timm's test config, stages of depth 1 and 2): a block is MBConv (NCHW) then block-
    # and grid-partition attention (NHWC), each attention + MLP. A stage's first MBConv projects
    # (not a site): stage 1 = 4 sites; stage 2 = 4 + 5 (its second MBConv is a site) = 9, one chain
    # as the NCHW <-> NHWC permutes keep the stream (class 1: the permute before the second MBConv).
    RealEntry(
        "timm",
        "maxvit",
        _timm_maxxvit("test_maxvit", depths=(1, 2), embed_dim=(32, 64), block_type=("M", "M")),
        images(64),
        13,
        (4, 9),
    ),
    # CoAtNet (timm's test config C-C-T-T, depths 2-2-2-2): conv stages: first MBConv projects, the
    # second is a site (1 each); transformer stages (NCHW attention): the first block's attention add
    # has a pooled projection shortcut (not a site), its MLP add and the second block's two adds are
    # sites (3 each). 8 sites, chains 1-1-3-3.
    RealEntry(
        "timm",
        "coatnet",
        _timm_maxxvit("test_coatnet", depths=(2, 2, 2, 2)),
        images(64),
        8,
        (1, 1, 3, 3),
        limits="class 10",
        projected=(11,),
    ),
    # EfficientNet-B0 block layout at width 0.25: blocks 1-2-2-3-3-4-1 per stage; a block is a
    # residual site when it keeps stride and width: the first stage's block (8 -> 8 channels after
    # rounding) and every block but the first of stages 2-6 = 1 + 1 + 1 + 2 + 2 + 3 = 10, a chain per
    # stage (stages start with a width or stride change).
    RealEntry("timm", "efficientnet_b0", _seeded(_timm_efficientnet), images(), 10, (1, 1, 1, 2, 2, 3)),
    # MobileNetV3-Small 0.5: residual inverted-residual blocks where stride 1 and width kept:
    # 1 in the 16-ch stage, 2 + 2 in the 24-ch stages (40 and 48 both round to 24: one chain of 4),
    # 2 in the 48-ch stage = 7 sites, chains 1-4-2.
    RealEntry("timm", "mobilenetv3", _timm("mobilenetv3_small_050"), images(), 7, (1, 4, 2)),
    # RegNetX-200MF depths 1-1-4-7: each stage's first block projects; 3 + 6 identity blocks = 9.
    RealEntry("timm", "regnet", _timm("regnetx_002"), images(), 9, (3, 6), limits="class 10", projected=(13,)),
    # MLP-Mixer, 3 blocks x (token mixing + channel mixing) = 6, one chain.
    RealEntry(
        "timm",
        "mixer",
        _timm_cls("mlp_mixer:MlpMixer", img_size=32, patch_size=8, embed_dim=16, num_blocks=3),
        images(),
        6,
        (6,),
        default=True,
    ),
    # ResMLP (Affine norms, layer scale), 3 blocks x 2 = 6, one chain.
    RealEntry(
        "timm",
        "resmlp",
        _timm_cls(
            "mlp_mixer:MlpMixer",
            img_size=32,
            patch_size=8,
            embed_dim=16,
            num_blocks=3,
            mlp_ratio=4,
            block_layer=_attr("mlp_mixer:ResBlock"),
            norm_layer=_attr("mlp_mixer:Affine"),
        ),
        images(),
        6,
        (6,),
    ),
    # PoolFormer (MetaFormer, pooling token mixer), depths 2-2-2-2: 2 sites per block = 4 per
    # stage, a chain per stage (downsampling conv between stages).
    RealEntry("timm", "poolformer", _seeded(_metaformer_poolformer), images(), 16, (4, 4, 4, 4)),
    # ConvMixer depth 3: each layer is Residual(depthwise conv) then a pointwise conv + GELU + BN:
    # the stream passes a parameterised conv between two residual adds, so by the documented rule
    # (a chain continues through dropout, norms, activations, casts) there is no shared residual
    # stream: 3 sites, 3 chains of 1, nothing to mix. That is what a conversion without
    # example_inputs gives; WITH shapes known (example_inputs=, or any export capture) mhc_fx links
    # chains through every single-input op that keeps the shape, the 1x1 conv included: one chain
    # of 3 (outside the known classes: the chains depend on whether example_inputs were given).
    RealEntry(
        "timm",
        "convmixer",
        _timm_cls("convmixer:ConvMixer", dim=16, depth=3, kernel_size=3, patch_size=4),
        images(),
        3,
        (1, 1, 1),
        now=(3, (3,)),
        classes=(0,),
        limits="no shared stream: a pointwise conv between consecutive residual adds",
    ),
    # LeViT (3 stages of depth 2): per block attention + MLP residuals = 4 per stage; the
    # subsample stages add an MLP residual after the attention-subsample = +1 for stages 2 and 3:
    # 14 sites, chains 4-5-5.
    RealEntry(
        "timm",
        "levit",
        _timm("levit_128s", img_size=64, embed_dim=(16, 24, 32), key_dim=4, num_heads=(2, 2, 2), depth=(2, 2, 2)),
        images(64),
        14,
        (4, 5, 5),
    ),
    # PVTv2 depths 2-2-2-2: 2 sites per block, a chain per stage (overlapping patch embed between).
    RealEntry(
        "timm",
        "pvt_v2",
        _timm_cls(
            "pvt_v2:PyramidVisionTransformerV2", embed_dims=(8, 16, 24, 32), depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1)
        ),
        images(),
        16,
        (4, 4, 4, 4),
    ),
    # BEiT (relative position bias, layer scale), 3 blocks x 2 = 6, one chain.
    RealEntry(
        "timm",
        "beit",
        _timm_cls(
            "beit:Beit",
            img_size=32,
            patch_size=8,
            embed_dim=16,
            depth=3,
            num_heads=2,
            use_abs_pos_emb=False,
            use_rel_pos_bias=True,
            init_values=0.1,
        ),
        images(),
        6,
        (6,),
    ),
    # EVA-02 (rotary embeddings, SwiGLU), 3 blocks x 2 = 6, one chain.
    RealEntry(
        "timm",
        "eva",
        _timm_cls(
            "eva:Eva",
            img_size=32,
            patch_size=8,
            embed_dim=16,
            depth=3,
            num_heads=2,
            mlp_ratio=4 * 2 / 3,
            swiglu_mlp=True,
            use_rot_pos_emb=True,
            ref_feat_shape=(4, 4),
        ),
        images(),
        6,
        (6,),
    ),
    # CaiT: 3 self-attention blocks x 2 = 6 (one chain on the patch tokens); 2 class-attention
    # blocks x 2 = 4 on the cls token (its own chain: the cls token is a new stream).
    RealEntry(
        "timm",
        "cait",
        _timm_cls(
            "cait:Cait",
            img_size=32,
            patch_size=8,
            embed_dim=16,
            depth=3,
            num_heads=2,
            depth_token_only=2,
            init_values=1e-5,
        ),
        images(),
        10,
        (6, 4),
    ),
    # XCiT: 3 XCA blocks x (attention + local patch interaction + MLP) = 9, one chain; then the
    # cls token is concatenated and 2 class-attention blocks add 2 each = 4. Inside a class-attention
    # block the stream is rebuilt as cat(norm(x[:, :1]), x[:, 1:]) between the two adds (a
    # multi-input op: a new stream), so those 4 sites form chains 1-2-1.
    RealEntry(
        "timm",
        "xcit",
        _timm_cls(
            "xcit:Xcit",
            img_size=32,
            patch_size=8,
            embed_dim=16,
            depth=3,
            num_heads=2,
            cls_attn_layers=2,
            eta=1.0,
            tokens_norm=False,
        ),
        images(),
        13,
        (9, 1, 2, 1),
        limits="the class-attention blocks rebuild the stream with a concatenation",
    ),
    # Twins-SVT depths 2-2-2-2: per stage block 0 (locally-grouped attention + MLP), the position
    # conv PosConv (x + conv(x) on the NCHW view of the tokens: a site), block 1 (global attention +
    # MLP) = 5 sites, one chain per stage = 20, through the NCHW <-> token reshapes around PosConv
    # (class 1). fx cannot trace Twins: example_inputs= is needed.
    RealEntry(
        "timm",
        "twins",
        _timm_cls(
            "twins:Twins",
            img_size=64,
            patch_size=4,
            embed_dims=(8, 16, 32, 64),
            num_heads=(1, 2, 2, 2),
            mlp_ratios=(2, 2, 2, 2),
            depths=(2, 2, 2, 2),
            sr_ratios=(8, 4, 2, 1),
            wss=(2, 2, 2, 2),
        ),
        images(64),
        20,
        (5, 5, 5, 5),
        needs_example=0,
    ),
    # NF-ResNet (timm's test_nfnet at depths 1-2-2-1, stem 16 channels): stage 1's block keeps 16
    # channels and stride 1 (identity shortcut, a site); stages 2-4 open with a projection (not a
    # site); the second blocks of stages 2 and 3 are identity sites: 3 sites, chains 1-1-1.
    RealEntry("timm", "nfnet", _seeded(_timm_nfnet), images(), 3, (1, 1, 1), limits="class 10", projected=(6,)),
    # DLA-34-style tree (basic blocks, levels 1-1-1-2-2-1): residual adds inside the trees'
    # blocks where the shape is kept; a tree's root aggregates children by concatenation and
    # each tree's first block projects, so chains are short: 8 sites, chains 1-1-2-1-2-1.
    RealEntry(
        "timm",
        "dla",
        _seeded(_timm_dla),
        images(),
        8,
        (1, 1, 2, 1, 2, 1),
        limits="class 10; tree aggregation",
        projected=(2, 2, 2, 2, 2, 2),
    ),
    # GhostNet 0.5: ghost bottlenecks with identity shortcuts where stride 1 and width kept;
    # the 5 stage-opening bottlenecks project. 11 sites, chains 1-1-1-3-1-4.
    RealEntry(
        "timm", "ghostnet", _timm("ghostnet_050"), images(), 11, (1, 1, 1, 3, 1, 4), limits="class 10", projected=(16,)
    ),
    # EdgeNeXt depths 2-2-2-2, global blocks (0, 1, 1, 1): stage 1 = 2 conv blocks (2 sites, a
    # chain); stages 2-4 = a conv block (1 site) then a split-transpose block, whose outer residual
    # `shortcut + x` continues the stage's chain (2) and whose XCA add `x + xca(norm(x))` is a residual
    # on the block's own branch (after the split convs' concatenation: a nested stream, a chain of 1).
    # 11 sites, chains 2-2-1-2-1-2-1 (execution order: the nested chain starts before the outer add).
    RealEntry(
        "timm",
        "edgenext",
        _timm_cls(
            "edgenext:EdgeNeXt", depths=(2, 2, 2, 2), dims=(8, 16, 24, 32), heads=(2, 2, 2, 2), d2_scales=(2, 2, 3, 4)
        ),
        images(64),
        11,
        (2, 2, 1, 2, 1, 2, 1),
    ),
    # MambaOut (timm's test config, depths 1-1-3-1): one gated-CNN residual per block = 6, a
    # chain per stage.
    RealEntry("timm", "mambaout", _timm("test_mambaout"), images(), 6, (1, 1, 3, 1)),
    # DaViT depths 1-1-2-1: each block = spatial window block + channel attention block, each with
    # conv position encoding (x + dwconv(x), NCHW), attention, conv position encoding, MLP = 4 adds:
    # 8 per block, 40 sites, one chain per stage = 8-8-16-8, through the flatten / view of the
    # stream between every two adds (class 1).
    RealEntry(
        "timm",
        "davit",
        _timm_cls(
            "davit:DaVit", depths=(1, 1, 2, 1), embed_dims=(8, 16, 32, 64), num_heads=(1, 2, 2, 2), window_size=2
        ),
        images(64),
        40,
        (8, 8, 16, 8),
        default=True,
    ),
    # FocalNet depths 1-1-2-1: modulation + MLP residuals per block = 2, chains 2-2-4-2.
    RealEntry(
        "timm",
        "focalnet",
        _timm_cls("focalnet:FocalNet", depths=(1, 1, 2, 1), embed_dim=8),
        images(64),
        10,
        (2, 2, 4, 2),
    ),
    # DenseNet (growth 4, blocks 2-2-2-2): concatenation, no residual add: 0 sites.
    RealEntry("timm", "densenet", _seeded(_timm_densenet), images(), 0, ()),
    # VGG-11: no residual add: 0 sites (fx cannot trace its pre-logits: example_inputs= needed).
    RealEntry("timm", "vgg11", _timm("vgg11"), images(), 0, (), needs_example=0),
]


# -----------------------------------------------------------------------------
# torchvision
# -----------------------------------------------------------------------------
def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=10, **kwargs)

    return _seeded(build)


def _tv_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    setting = [CNBlockConfig(8, 16, 2), CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 2)]
    return ConvNeXt(setting, num_classes=10)


def _tv_swin() -> nn.Module:
    from torchvision.models import SwinTransformer

    return SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4], num_classes=10
    )


def _tv_densenet() -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, num_classes=10)


TORCHVISION: list[RealEntry] = [
    # ResNet-18 (full width): stage 1 keeps 64 channels (2 identity sites, one chain); stages 2-4
    # start with a projection: 1 identity site each. 5 sites, chains 2-1-1-1.
    RealEntry(
        "torchvision",
        "resnet18",
        _tv("resnet18"),
        images(),
        5,
        (2, 1, 1, 1),
        default=True,
        compile=True,
        limits="class 10",
        projected=(8,),
    ),
    # ResNet-50 (3-4-6-3, every stage starts with a projection): 12 sites, chains 2-3-5-2.
    RealEntry(
        "torchvision", "resnet50", _tv("resnet50"), images(), 12, (2, 3, 5, 2), limits="class 10", projected=(16,)
    ),
    # MobileNetV2 width 0.25: inverted residuals with stride 1 and width kept: 1 + 2 + 3 + 2 + 2
    # in the 24/32/64/96/160 stages (16 -> 8 rounding makes the first 16-ch block a site too) = 11.
    RealEntry("torchvision", "mobilenet_v2", _tv("mobilenet_v2", width_mult=0.25), images(), 11, (1, 1, 2, 3, 2, 2)),
    # MobileNetV3-Small: 1 + 2 + 1 + 2 residual blocks = 6, chains 1-2-1-2.
    RealEntry("torchvision", "mobilenet_v3_small", _tv("mobilenet_v3_small"), images(), 6, (1, 2, 1, 2)),
    # EfficientNet-B0: blocks 1-2-2-3-3-4-1, all but each stage's first = 9 sites, chains 1-1-2-2-3.
    RealEntry("torchvision", "efficientnet_b0", _tv("efficientnet_b0"), images(), 9, (1, 1, 2, 2, 3)),
    # ConvNeXt (dims 8-16-32, depths 2-2-2): one residual per CNBlock = 6, a chain per stage.
    RealEntry("torchvision", "convnext", _seeded(_tv_convnext), images(), 6, (2, 2, 2)),
    # VisionTransformer (3 layers, hidden 16): 2 per layer = 6, one chain.
    RealEntry("torchvision", "vit", _seeded(_tv_vit), images(), 6, (6,)),
    # Swin (depths 2-2, window 4): 2 per block = 4 per stage, chains 4-4 (torchvision keeps NHWC).
    RealEntry("torchvision", "swin", _seeded(_tv_swin), images(), 8, (4, 4)),
    # RegNetY-400MF (depths 1-3-6-6): stage-opening blocks project: 0 + 2 + 5 + 5 = 12.
    RealEntry(
        "torchvision",
        "regnet_y_400mf",
        _tv("regnet_y_400mf"),
        images(),
        12,
        (2, 5, 5),
        limits="class 10",
        projected=(16,),
    ),
    # SqueezeNet 1.1: fire modules concatenate, no residual add: 0 sites.
    RealEntry("torchvision", "squeezenet1_1", _tv("squeezenet1_1"), images(64), 0, ()),
    # DenseNet (growth 4, blocks 2-2-2-2): concatenation only: 0 sites.
    RealEntry("torchvision", "densenet", _seeded(_tv_densenet), images(), 0, ()),
]

# -----------------------------------------------------------------------------
# transformers (tiny configs, random weights)
# -----------------------------------------------------------------------------
_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=32,
)


def _hf(model: str, config: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model)(getattr(transformers, config)(**kwargs))

    return _seeded(build)


_AUDIO = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(8, 8),
    conv_stride=(4, 2),
    conv_kernel=(8, 4),
    num_conv_pos_embeddings=8,
    num_conv_pos_embedding_groups=2,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    mask_time_prob=0.0,
)


def _audio(batch: int = 2) -> dict:
    return {"input_values": torch.randn(batch, 400 if batch == 2 else 320, generator=_gen())}


def _whisper_inputs(batch: int = 2) -> dict:
    return {
        "input_features": torch.randn(batch, 8, 16, generator=_gen()),
        "decoder_input_ids": torch.randint(0, VOCAB, (batch, 5 if batch == 2 else 3), generator=_gen(1)),
        "use_cache": False,
    }


_TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=16,
)
_VISION = dict(
    image_size=16, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
)


def _clip() -> nn.Module:
    import transformers

    return transformers.CLIPModel(transformers.CLIPConfig(text_config=_TEXT, vision_config=_VISION, projection_dim=8))


def _siglip() -> nn.Module:
    import transformers

    return transformers.SiglipModel(transformers.SiglipConfig(text_config=_TEXT, vision_config=_VISION))


def _text_image(batch: int = 2) -> dict:
    return {
        "input_ids": torch.randint(0, VOCAB, (batch, 7 if batch == 2 else 5), generator=_gen()),
        "pixel_values": torch.randn(batch, 3, 16, 16, generator=_gen(1)),
    }


_ENC_DEC = dict(
    vocab_size=VOCAB,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_position_embeddings=32,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    decoder_start_token_id=0,
    pad_token_id=0,
)

_ids = tokens()
_enc_dec_ids = tokens(decoder_input_ids=_decoder_ids)
_px32 = images(32)

TRANSFORMERS: list[RealEntry] = [
    # decoder LMs, 2 layers: pre-norm blocks add attention and MLP: 4 sites, one chain, unless said
    RealEntry(
        "transformers",
        "gpt2",
        _hf(
            "GPT2LMHeadModel",
            "GPT2Config",
            vocab_size=VOCAB,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=32,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
        compile=True,
    ),
    RealEntry(
        "transformers",
        "llama",
        _hf("LlamaForCausalLM", "LlamaConfig", **_DECODER, num_key_value_heads=1),
        _ids,
        4,
        (4,),
        example=False,
        default=True,
        compile="default",
    ),
    RealEntry(
        "transformers",
        "mistral",
        _hf("MistralForCausalLM", "MistralConfig", **_DECODER, num_key_value_heads=1),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "qwen2",
        _hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER, num_key_value_heads=1),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "gemma",
        _hf("GemmaForCausalLM", "GemmaConfig", **_DECODER, num_key_value_heads=1, head_dim=8),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # Gemma-2: sandwich norms (post-attention / post-feedforward RMSNorm on the branch): still 2 per layer.
    RealEntry(
        "transformers",
        "gemma2",
        _hf("Gemma2ForCausalLM", "Gemma2Config", **_DECODER, num_key_value_heads=1, head_dim=8),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # Phi: parallel block `attn + mlp + residual`: the branch sum is not a site, 1 site per layer.
    RealEntry(
        "transformers",
        "phi",
        _hf("PhiForCausalLM", "PhiConfig", **_DECODER, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
        _ids,
        2,
        (2,),
        example=False,
        limits="parallel block: attention and MLP share one site",
    ),
    RealEntry(
        "transformers",
        "phi3",
        _hf(
            "Phi3ForCausalLM",
            "Phi3Config",
            **_DECODER,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attention_dropout=0.0,
            pad_token_id=0,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # GPT-NeoX (use_parallel_residual, written `attn + mlp + residual`): 1 site per layer = 2.
    RealEntry(
        "transformers",
        "gpt_neox",
        _hf("GPTNeoXForCausalLM", "GPTNeoXConfig", **_DECODER, hidden_dropout=0.0, attention_dropout=0.0),
        _ids,
        2,
        (2,),
        example=False,
        limits="parallel block: attention and MLP share one site",
    ),
    # GPT-J: parallel `attn + ff + residual`: 1 site per layer = 2.
    RealEntry(
        "transformers",
        "gptj",
        _hf(
            "GPTJForCausalLM",
            "GPTJConfig",
            vocab_size=VOCAB,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=32,
            rotary_dim=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        _ids,
        2,
        (2,),
        example=False,
        limits="parallel block: attention and MLP share one site",
    ),
    # CodeGen: GPT-J's block: 2 sites.
    RealEntry(
        "transformers",
        "codegen",
        _hf(
            "CodeGenForCausalLM",
            "CodeGenConfig",
            vocab_size=VOCAB,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=32,
            n_ctx=32,
            rotary_dim=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        _ids,
        2,
        (2,),
        example=False,
        limits="parallel block: attention and MLP share one site",
    ),
    # OPT: 2 per layer = 4, one chain, through the flatten of the stream to (B*T, C) before the MLP
    # add and the view back after (class 1).
    RealEntry(
        "transformers",
        "opt",
        _hf(
            "OPTForCausalLM",
            "OPTConfig",
            vocab_size=VOCAB,
            hidden_size=16,
            ffn_dim=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            word_embed_proj_dim=16,
            dropout=0.0,
            attention_dropout=0.0,
            layerdrop=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
        default=True,
    ),
    # BLOOM: 2 per layer = 4, one chain; both adds are `dropout_add(x, residual, p, training)`, a
    # free helper function (class 2: followed into the helper).
    RealEntry(
        "transformers",
        "bloom",
        _hf(
            "BloomForCausalLM",
            "BloomConfig",
            vocab_size=VOCAB,
            hidden_size=16,
            n_layer=2,
            n_head=2,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
        default=True,
    ),
    # Falcon (parallel_attn): `dropout_add(mlp + attn, residual, ...)`: 1 site per layer = 2, one
    # chain; the add lives in the helper dropout_add (class 2: followed into the helper).
    RealEntry(
        "transformers",
        "falcon",
        _hf(
            "FalconForCausalLM",
            "FalconConfig",
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        ),
        _ids,
        2,
        (2,),
        example=False,
    ),
    # StableLM with use_parallel_residual: `residual + attn + mlp` = (residual + attn) + mlp: both
    # adds are sites of one chain (2 per layer) = 4.
    RealEntry(
        "transformers",
        "stablelm_parallel",
        _hf(
            "StableLmForCausalLM",
            "StableLmConfig",
            **_DECODER,
            num_key_value_heads=1,
            use_parallel_residual=True,
            hidden_dropout=0.0,
            attention_dropout=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # MPT: 2 per layer = 4.
    RealEntry(
        "transformers",
        "mpt",
        _hf(
            "MptForCausalLM",
            "MptConfig",
            vocab_size=VOCAB,
            d_model=16,
            n_layers=2,
            n_heads=2,
            max_seq_len=32,
            expansion_ratio=2,
            resid_pdrop=0.0,
            emb_pdrop=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # MoE: the sparse MLP block is one branch: 2 per layer = 4.
    RealEntry(
        "transformers",
        "mixtral",
        _hf(
            "MixtralForCausalLM",
            "MixtralConfig",
            **_DECODER,
            num_key_value_heads=1,
            num_local_experts=4,
            num_experts_per_tok=2,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "qwen2_moe",
        _hf(
            "Qwen2MoeForCausalLM",
            "Qwen2MoeConfig",
            **_DECODER,
            num_key_value_heads=1,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # Mamba: one residual per MambaBlock = 2, one chain.
    RealEntry(
        "transformers",
        "mamba",
        _hf(
            "MambaForCausalLM",
            "MambaConfig",
            vocab_size=VOCAB,
            hidden_size=16,
            state_size=4,
            num_hidden_layers=2,
            expand=2,
            conv_kernel=4,
        ),
        _ids,
        2,
        (2,),
        example=False,
    ),
    # encoders (post-norm BERT family: LN(h + x) after attention and after the MLP): 4, one chain
    RealEntry(
        "transformers",
        "bert",
        _hf("BertModel", "BertConfig", **_DECODER, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "roberta",
        _hf(
            "RobertaModel",
            "RobertaConfig",
            **{**_DECODER, "max_position_embeddings": 40},
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=1,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "distilbert",
        _hf(
            "DistilBertModel",
            "DistilBertConfig",
            vocab_size=VOCAB,
            dim=16,
            hidden_dim=32,
            n_layers=2,
            n_heads=2,
            max_position_embeddings=32,
            dropout=0.0,
            attention_dropout=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # ALBERT shares one layer's weights across the 2 layers: still 2 adds per call = 4 sites.
    RealEntry(
        "transformers",
        "albert",
        _hf(
            "AlbertModel",
            "AlbertConfig",
            **_DECODER,
            embedding_size=8,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "deberta_v2",
        _hf("DebertaV2Model", "DebertaV2Config", **_DECODER, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        _ids,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "electra",
        _hf(
            "ElectraModel",
            "ElectraConfig",
            **_DECODER,
            embedding_size=8,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        _ids,
        4,
        (4,),
        example=False,
    ),
    # encoder-decoders: encoder 2 x 2 = 4 (one chain), decoder 2 x 3 (self, cross, MLP) = 6 (a second chain)
    RealEntry(
        "transformers",
        "t5",
        _hf(
            "T5ForConditionalGeneration",
            "T5Config",
            vocab_size=VOCAB,
            d_model=16,
            d_kv=8,
            d_ff=32,
            num_layers=2,
            num_heads=2,
            dropout_rate=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
        ),
        _enc_dec_ids,
        10,
        (4, 6),
        example=False,
    ),
    # BART with encoder / decoder LayerDrop 0.5 (exact in eval; in training a dropped layer must
    # not desynchronise the chain: class 6).
    RealEntry(
        "transformers",
        "bart_layerdrop",
        _hf("BartForConditionalGeneration", "BartConfig", **_ENC_DEC, encoder_layerdrop=0.5, decoder_layerdrop=0.5),
        _enc_dec_ids,
        10,
        (4, 6),
        example=False,
        default=True,
    ),
    RealEntry(
        "transformers",
        "marian",
        _hf("MarianMTModel", "MarianConfig", **_ENC_DEC),
        _enc_dec_ids,
        10,
        (4, 6),
        example=False,
    ),
    # Whisper: the convolutional front end, then encoder 4 + decoder 6 (mhc_fx builds the
    # log-mel input_features and decoder_input_ids itself).
    RealEntry(
        "transformers",
        "whisper",
        _hf(
            "WhisperForConditionalGeneration",
            "WhisperConfig",
            vocab_size=VOCAB,
            d_model=16,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_mel_bins=8,
            max_source_positions=8,
            max_target_positions=16,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            encoder_layerdrop=0.0,
            decoder_layerdrop=0.0,
            decoder_start_token_id=0,
            pad_token_id=0,
        ),
        _whisper_inputs,
        10,
        (4, 6),
    ),
    # vision
    RealEntry(
        "transformers",
        "vit",
        _hf(
            "ViTModel",
            "ViTConfig",
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        _px32,
        4,
        (4,),
        example=False,
    ),
    RealEntry(
        "transformers",
        "deit",
        _hf(
            "DeiTModel",
            "DeiTConfig",
            image_size=32,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        _px32,
        4,
        (4,),
        example=False,
    ),
    # Swin (depths 2-2): 2 per block, a chain per stage = 4-4.
    RealEntry(
        "transformers",
        "swin",
        _hf(
            "SwinModel",
            "SwinConfig",
            image_size=32,
            patch_size=4,
            embed_dim=8,
            depths=[2, 2],
            num_heads=[2, 2],
            window_size=4,
            drop_path_rate=0.0,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        _px32,
        8,
        (4, 4),
        example=False,
    ),
    # ConvNeXt (2 stages of 2): one per block, chains 2-2.
    RealEntry(
        "transformers",
        "convnext",
        _hf("ConvNextModel", "ConvNextConfig", hidden_sizes=[8, 16], depths=[2, 2], num_stages=2, drop_path_rate=0.0),
        _px32,
        4,
        (2, 2),
        example=False,
    ),
    # ResNet (basic, embedding 8, stages 8-16 of depth 2): stage 1 = 2 identity sites, stage 2 =
    # projection + 1 site: 3 sites, chains 2-1.
    RealEntry(
        "transformers",
        "resnet",
        _hf("ResNetModel", "ResNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], layer_type="basic"),
        _px32,
        3,
        (2, 1),
        example=False,
        limits="class 10",
        projected=(4,),
    ),
    # audio: the positional conv embedding add (x + conv(x)) then 2 post-norm layers x 2 = 5, one
    # chain. Wav2Vec2's default layerdrop 0.1 is kept (class 6 in training).
    RealEntry("transformers", "wav2vec2", _hf("Wav2Vec2Model", "Wav2Vec2Config", **_AUDIO), _audio, 5, (5,)),
    RealEntry(
        "transformers",
        "hubert",
        _hf("HubertModel", "HubertConfig", **_AUDIO, layerdrop=0.0),
        _audio,
        5,
        (5,),
    ),
    # multimodal: text tower 2 x 2 = 4 and vision tower 2 x 2 = 4, two chains (SigLIP's attention
    # pooling head adds one more residual, a chain of its own: 4-1-4 in execution order).
    RealEntry("transformers", "clip", _seeded(_clip), _text_image, 8, (4, 4), default=True),
    RealEntry("transformers", "siglip", _seeded(_siglip), _text_image, 9, (4, 1, 4)),
]


# -----------------------------------------------------------------------------
# diffusers
# -----------------------------------------------------------------------------
def _unet2d() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        attention_head_dim=4,
    )


def _unet2d_inputs(batch: int = 2) -> dict:
    return {"sample": torch.randn(batch, 3, 16, 16, generator=_gen()), "timestep": torch.tensor([10, 500, 999][:batch])}


def _unet2d_cond() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=4,
        attention_head_dim=4,
    )


def _unet2d_cond_inputs(batch: int = 2) -> dict:
    return {
        "sample": torch.randn(batch, 4, 16, 16, generator=_gen()),
        "timestep": torch.tensor([10, 500, 999][:batch]),
        "encoder_hidden_states": torch.randn(batch, 5, 8, generator=_gen(1)),
    }


def _dit() -> nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=4,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=4,
    )


def _dit_inputs(batch: int = 2) -> dict:
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=_gen()),
        "timestep": torch.tensor([10, 500, 999][:batch]),
        "class_labels": torch.tensor([1, 3, 5][:batch]),
    }


DIFFUSERS: list[RealEntry] = [
    # UNet2DModel (blocks Down, AttnDown | AttnUp, Up; 2 layers per block). down 0: 2 ResNet blocks
    # with identity shortcuts (a chain of 2, ended by the downsampler); down 1: ResNet 0 projects
    # 8 -> 16, then attention 0 (its residual is added inside the attention processor, a callable
    # object), ResNet 1, attention 1, and the mid block's ResNet, attention, ResNet continue that
    # stream (a chain of 6); up 0: each of 3 ResNets takes a concatenated skip (projection), each
    # attention after it is a chain of 1; up 1: projections only. 11 sites, chains 2-6-1-1-1.
    # The processors' adds are followed into the processor (class 2).
    RealEntry(
        "diffusers",
        "UNet2DModel",
        _seeded(_unet2d),
        _unet2d_inputs,
        11,
        (2, 6, 1, 1, 1),
        needs_example=0,
        default=True,
    ),
    # UNet2DConditionModel (CrossAttnDown, Down | Up, CrossAttnUp; 1 layer per block). A
    # Transformer2DModel is norm + proj_in, BasicTransformerBlock (self-attention, cross-attention,
    # feed-forward: 3 sites on the projected stream, a chain), proj_out, and its outer residual
    # `output + residual` (a site on the UNet stream, added in a helper method). down 0: ResNet
    # (identity) + outer = chain of 2, inner 3; mid: ResNet, outer, ResNet = 3, inner 3; up 1: two
    # ResNets with concatenated skips (projections), each followed by a transformer: inner 3 and
    # outer 1 each. 19 sites, chains 2-3-3-3-3-1-3-1 (the outer adds through class 2).
    RealEntry(
        "diffusers",
        "UNet2DConditionModel",
        _seeded(_unet2d_cond),
        _unet2d_cond_inputs,
        19,
        (2, 3, 3, 3, 3, 1, 3, 1),
        needs_example=0,
    ),
    # DiT (adaLN-zero): per block gate * attn + x and gate * ff + x = 2, 2 blocks = 4, one chain.
    RealEntry("diffusers", "DiTTransformer2DModel", _seeded(_dit), _dit_inputs, 4, (4,), needs_example=0, compile=True),
]


# -----------------------------------------------------------------------------
# peft (LoRA on a tiny Llama, both orders)
# -----------------------------------------------------------------------------
def _lora_config():
    import peft

    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def _tiny_llama() -> nn.Module:
    import transformers

    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**_DECODER, num_key_value_heads=1))


def _llama_then_peft() -> nn.Module:
    return _tiny_llama()


def _peft_after_convert(converted: nn.Module) -> nn.Module:
    """convert -> get_peft_model: peft freezes every parameter it does not adapt, the mixing
    logits included; a user trains them by making them trainable again, as done here."""
    import peft

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        model = peft.get_peft_model(converted, _lora_config())
    for name, p in model.named_parameters():
        if ".mhc." in name or name.startswith("mhc."):
            p.requires_grad_(True)
    return model


def _peft_model() -> nn.Module:
    import peft

    return peft.get_peft_model(_tiny_llama(), _lora_config())


PEFT: list[RealEntry] = [
    # convert(llama) then get_peft_model: the Llama's 4 sites, one chain (mhc.* re-enabled for training).
    RealEntry(
        "peft",
        "llama_convert_then_lora",
        _seeded(_llama_then_peft),
        _ids,
        4,
        (4,),
        example=False,
        setup=_peft_after_convert,
        limits="get_peft_model freezes mhc.*: make them trainable",
    ),
    # get_peft_model(llama) then convert: mhc_fx builds the inputs from the wrapped Llama;
    # 4 sites, one chain (the LoRA adds inside q_proj/v_proj are not residual connections).
    RealEntry(
        "peft",
        "lora_then_convert",
        _seeded(_peft_model),
        tokens(use_cache=_no_cache),
        4,
        (4,),
        default=True,
    ),
]

REAL_ZOO: list[RealEntry] = TIMM + TORCHVISION + TRANSFORMERS + DIFFUSERS + PEFT
BY_NAME: dict[str, RealEntry] = {f"{e.family}/{e.name}": e for e in REAL_ZOO}

FAMILY_MODULE = {
    "timm": "timm",
    "torchvision": "torchvision",
    "transformers": "transformers",
    "diffusers": "diffusers",
    "peft": "peft",
}


def available(family: str) -> bool:
    try:
        importlib.import_module(FAMILY_MODULE[family])
        return True
    except Exception:  # ImportError, or torchvision's RuntimeError without .ci/patch_torchvision.py
        return False


# -----------------------------------------------------------------------------
# the table
# -----------------------------------------------------------------------------
@dataclasses.dataclass
class Measured:
    sites: int = 0
    chains: tuple[int, ...] = ()
    mixing: int = 0
    exact: bool | None = None
    live: int | None = None  # sites whose perturbed mixing weights change the output
    without_example: str = ""
    projected: tuple[int, ...] | None = None  # chains with auto_project=True, when exact at init
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0


def measure(entry: RealEntry, without_example: bool = True) -> Measured:
    """Convert ``entry`` (``mode="mhc"``) and report what happened; never raises."""
    import mhc_fx

    out = Measured()
    start = time.perf_counter()
    try:
        original = entry.make()
        converted = convert(entry, original)
        report = mhc_fx.explain(converted if mhc_fx.is_converted(converted) else converted.get_base_model())
        out.sites = len(report.sites)
        out.chains = tuple(len(c) for c in report.chains.values())
        out.mixing = sum(1 for s in report.sites if s.history >= 2)
        for s in report.skipped:
            out.skipped[s.reason] = out.skipped.get(s.reason, 0) + 1
        x = entry.call_inputs()
        with torch.no_grad():
            want, got = float_outputs(call(original, x)), float_outputs(call(converted.eval(), x))
        out.exact = len(want) == len(got) > 0 and all(torch.equal(a, b) for a, b in zip(want, got))
        if out.mixing:
            out.live = live_sites(converted, x)
        if entry.projected is not None:
            projected = convert(entry, original, auto_project=True)
            with torch.no_grad():
                got = float_outputs(call(projected.eval(), x))
            if all(torch.equal(a, b) for a, b in zip(want, got)):
                out.projected = tuple(len(c) for c in mhc_fx.explain(projected).chains.values())
    except Exception as error:  # a crash is a row of the table, not the end of it
        out.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160] if str(error).strip() else ''}"
    if without_example and entry.example and not out.error:
        try:
            converted = convert(entry, entry.make(), with_example=False)
            with torch.no_grad():
                call(converted, entry.call_inputs())
            out.without_example = "ok"
        except Exception as error:
            out.without_example = f"{type(error).__name__}"
    out.seconds = time.perf_counter() - start
    return out


_SHORT = {
    "neither operand is computed from the other": "not residual",
    "the branch path holds no op with parameters": "no params on branch",
    "operand shapes differ": "shapes differ",
    "a residual-like add in code mhc_fx could not rewrite": "in helper code",
    "in-place add on a value": "aliased in-place",
    "the stream is scaled": "scaled stream",
}


def _short(reason: str) -> str:
    for prefix, short in _SHORT.items():
        if reason.startswith(prefix):
            return short
    return reason[:40]


def _chains(chains: tuple[int, ...]) -> str:
    if not chains:
        return "0"
    if len(chains) > 6 and len(set(chains)) == 1:
        return f"{len(chains)} x {chains[0]}"
    return f"{len(chains)} ({'-'.join(map(str, chains))})"


def row(entry: RealEntry, m: Measured) -> str:
    if m.error:
        return f"| {entry.family} | {entry.name} | - | - | - | **crash** | {m.error} |"
    loses = []
    if (m.sites, m.chains) != (entry.sites, entry.chains):
        classes = ", ".join(map(str, entry.classes)) or "?"
        loses.append(f"class {classes}: ideal {entry.sites} sites, chains {'-'.join(map(str, entry.chains)) or '0'}")
    if entry.limits:
        loses.append(entry.limits)
    if m.projected is not None:
        loses.append(f"with auto_project=True: chains {_chains(m.projected)}, exact at init")
    if entry.train_class:
        loses.append(f"training: class {entry.train_class}")
    if m.without_example and m.without_example != "ok":
        loses.append(f"needs example_inputs= ({m.without_example})")
    skipped = {}
    for reason, n in m.skipped.items():
        skipped[_short(reason)] = skipped.get(_short(reason), 0) + n
    if skipped:
        loses.append("skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(skipped.items(), key=lambda kv: -kv[1])))
    exact = "yes" if m.exact else "**NO**"
    mixing = f"{m.mixing}"
    if m.live is not None and m.live < m.mixing:
        mixing += f" (**{m.mixing - m.live} dead**: their weights do not act)"
    return (
        f"| {entry.family} | {entry.name} | {m.sites} | {_chains(m.chains)} | {mixing} | {exact} | "
        f"{'; '.join(loses) or '-'} |"
    )


HEADER = (
    "| family | model | sites | chains | sites with mixing (K >= 2) | exact at init | what it loses |\n"
    "|---|---|---|---|---|---|---|"
)


def table(entries=None, progress=None, without_example: bool = True) -> str:
    lines = [HEADER]
    for entry in entries if entries is not None else REAL_ZOO:
        if not available(entry.family):
            lines.append(f"| {entry.family} | {entry.name} | - | - | - | - | {entry.family} not importable |")
            continue
        m = measure(entry, without_example)
        lines.append(row(entry, m))
        if progress is not None:
            progress(
                f"{entry.family}/{entry.name}: {m.sites} sites, chains {m.chains}, mixing {m.mixing}, "
                f"exact {m.exact}, live {m.live}, without example {m.without_example or '-'} {m.error} "
                f"({m.seconds:.1f} s)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.models.real_zoo", description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="convert every entry and print the markdown table")
    parser.add_argument("--only", nargs="*", help="family/name or family entries to include")
    parser.add_argument("--no-without-example", action="store_true", help="skip the conversion without example_inputs")
    args = parser.parse_args(argv)
    entries = REAL_ZOO
    if args.only:
        entries = [
            e for e in REAL_ZOO if f"{e.family}/{e.name}" in args.only or e.family in args.only or e.name in args.only
        ]
    if not args.table:
        for e in entries:
            print(
                f"{e.family}/{e.name}: ideal {e.sites} sites, chains {e.chains}; today {e.today}; classes {e.classes}"
            )
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(
        table(
            entries,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            without_example=not args.no_without_example,
        )
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
