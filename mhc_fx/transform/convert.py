"""`convert`, `explain`, `mixing_weights`, `inject_mhc`: the public verbs of the transform.

Conversion = analyse, then install:
1. *analyse*: every module's forward (where its source can be read) is rewritten
   so additions call the site runtime; one whole-model graph is captured with
   each addition tagged; sites and chains are found on it; then the rewrites are
   removed again.
2. *install*: only the modules that own sites (and their ancestors, which open the
   per-call scope) get their rewritten forward, bound on the instance, so the
   user's object, class, signature and output types stay. The per-site logits
   are created under ``mhc.`` named after the owner's module path.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import types
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..config import MHCConfig
from ..projections import mixing_weights as _project
from . import hf, params
from .calls import HELPERS, keep_hosting
from .capture import TORCH_RESIDUAL_BLOCKS, capture_export, capture_fx, normalize_inputs
from .report import Report, SiteInfo, SkippedInfo
from .runtime import SiteRuntime, SiteSpec, scoped_forward
from .sites import NEEDS_SHAPES, SiteFinder
from .source import RewriteError, rewrite_function

RUNTIME = "_mhc_fx_runtime"
PATH = "_mhc_fx_path"
REPLICATE = "_replicate_for_data_parallel"
_BOUND = ("forward", RUNTIME, PATH, REPLICATE)


def _refuse_replication(self):
    """``nn.DataParallel``'s replication (a shallow copy of the module's ``__dict__``) would keep
    the rewritten forwards bound to the original modules and their parameters."""
    raise RuntimeError(
        "mhc_fx: nn.DataParallel cannot replicate a converted model (its rewritten forwards stay bound to "
        "the original modules); use torch.nn.parallel.DistributedDataParallel, one process per device"
    )


class Scope:
    """``include`` / ``exclude``: module-path globs or module classes."""

    def __init__(self, include, exclude, model: nn.Module) -> None:
        self.include = self._normalize("include", include)
        self.exclude = self._normalize("exclude", exclude)
        modules = dict(model.named_modules())
        for name, patterns in (("include", self.include), ("exclude", self.exclude)):
            for pattern in patterns or ():
                if not any(self._match(pattern, p, m) for p, m in modules.items()):
                    raise ValueError(f"{name} pattern {pattern!r} matches no module of the model")

    @staticmethod
    def _normalize(name: str, value) -> list | None:
        if value is None:
            return None
        if isinstance(value, (str, type)):
            value = [value]
        try:
            value = list(value)
        except TypeError:
            raise TypeError(
                f"{name} must be a module-path glob, an nn.Module class or a list of them, got {value!r}"
            ) from None
        for v in value:
            if not (isinstance(v, str) or (isinstance(v, type) and issubclass(v, nn.Module))):
                raise TypeError(f"{name} must hold module-path globs (str) or nn.Module classes, got {v!r}")
        return value

    @staticmethod
    def _match(pattern, path: str, module: nn.Module) -> bool:
        if isinstance(pattern, type):
            return isinstance(module, pattern)
        return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern + ".*")

    def allows(self, path: str, model: nn.Module) -> bool:
        # A site belongs to a scope when its owner or one of the owner's ancestors matches.
        chain = [(p, model.get_submodule(p)) for p in _prefixes(path)]
        if self.include is not None and not any(self._match(pt, p, m) for pt in self.include for p, m in chain):
            return False
        if self.exclude and any(self._match(pt, p, m) for pt in self.exclude for p, m in chain):
            return False
        return True


def _prefixes(path: str) -> list[str]:
    parts = path.split(".") if path else []
    return [".".join(parts[:i]) for i in range(len(parts) + 1)]


def _rewritable(cls: type) -> bool:
    if cls in TORCH_RESIDUAL_BLOCKS:
        return True
    return not cls.__module__.startswith("torch.") and cls.forward is not nn.Module.forward


#: Attributes that switch off torch's fused inference paths, whose single kernel would add
#: the residual inside C++ where no site can see it: (class, attribute, value that disables).
_FAST_PATH_SWITCHES = (
    (nn.TransformerEncoderLayer, "activation_relu_or_gelu", 0),  # only read by the fast-path checks
    (nn.TransformerEncoder, "use_nested_tensor", False),
)


def _switch_fast_paths_off(model: nn.Module) -> list[tuple[nn.Module, str, Any]]:
    """Switch torch's fused paths off in ``model``; (module, attribute, previous value) of each change."""
    changed = []
    for m in model.modules():
        for cls, attr, value in _FAST_PATH_SWITCHES:
            if isinstance(m, cls) and hasattr(m, attr) and getattr(m, attr) != value:
                changed.append((m, attr, getattr(m, attr)))
                setattr(m, attr, value)
    return changed


@contextlib.contextmanager
def _fast_paths_off(model: nn.Module):
    """Switch torch's fused paths off while the graph is captured, then restore them."""
    changed = _switch_fast_paths_off(model)
    try:
        yield
    finally:
        for m, attr, old in changed:
            setattr(m, attr, old)


class _Instrumenter:
    """Binds rewritten forwards on instances (cached per class) and removes them."""

    def __init__(self, runtime: SiteRuntime) -> None:
        self.runtime = runtime
        self.cache: dict[type, types.FunctionType | RewriteError] = {}
        self.bound: list[tuple[nn.Module, dict]] = []

    def rewritten(self, cls: type) -> types.FunctionType | None:
        if cls not in self.cache:
            try:
                self.cache[cls] = rewrite_function(cls.forward, HELPERS)
            except RewriteError as exc:
                self.cache[cls] = exc
        fn = self.cache[cls]
        return fn if isinstance(fn, types.FunctionType) else None

    def bind(self, module: nn.Module, path: str, scope_only_ok: bool) -> bool:
        fn = self.rewritten(type(module)) if _rewritable(type(module)) else None
        if fn is None:
            if not scope_only_ok:
                return False
            fn = scoped_forward
        if "forward" in module.__dict__:
            raise ValueError(
                f"mhc_fx: the forward of {path or '(root)'} ({type(module).__name__}) is overridden on the instance "
                "(a hook wrapper such as accelerate's device_map dispatch); converting would drop it. "
                "Convert the model first, then add the hooks"
            )
        saved = {k: module.__dict__[k] for k in _BOUND if k in module.__dict__}
        module.__dict__["forward"] = types.MethodType(fn, module)
        module.__dict__[RUNTIME] = self.runtime
        module.__dict__[PATH] = path
        module.__dict__[REPLICATE] = types.MethodType(_refuse_replication, module)
        self.bound.append((module, saved))
        return True

    def unbind_all(self) -> None:
        for module, saved in self.bound:
            for key in _BOUND:
                module.__dict__.pop(key, None)
            module.__dict__.update(saved)
        self.bound.clear()


def _capture(model: nn.Module, example_inputs):
    args, kwargs = normalize_inputs(example_inputs)
    hf_model = hf.hf_model_of(model)
    if hf_model is not None:
        if example_inputs is None:
            kwargs = hf.example_inputs(hf_model)  # a PeftModel passes them on to the model it wraps
        return _capture_export(model, args, kwargs)
    try:
        return capture_fx(model, args, kwargs)
    except Exception as fx_error:  # fx fails on data-dependent control flow and more
        if example_inputs is None:
            raise ValueError(
                f"torch.fx cannot trace {type(model).__name__} ({type(fx_error).__name__}: {fx_error}); "
                "pass example_inputs=... so mhc_fx can capture it with torch.export"
            ) from fx_error
        return _capture_export(model, args, kwargs)


def _capture_export(model: nn.Module, args, kwargs):
    try:
        return capture_export(model, args, kwargs)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"torch.export could not capture {type(model).__name__} with the example inputs "
            f"({type(error).__name__}: {first[:300]}). mhc_fx analyses one graph of the whole model: "
            "Python control flow on tensor values (`if x.sum() > 0:`) cannot be captured; make it depend on "
            "shapes or flags, or use torch.cond"
        ) from error


def _analyse(model: nn.Module, config: MHCConfig, scope: Scope, example_inputs):
    """Find the sites of ``model`` (left unmodified). Returns (specs, report, the followed helper calls
    that lead to a site)."""
    runtime = SiteRuntime(config)
    runtime.tags = []
    inst = _Instrumenter(runtime)
    modes = {m: m.training for m in model.modules()}
    for path, module in model.named_modules():
        inst.bind(module, path, scope_only_ok=False)
    token = runtime.open()  # the capture runs inside one scope, whatever the root's forward is
    try:
        model.eval()
        with torch.no_grad(), _fast_paths_off(model):
            captured = _capture(model, example_inputs)
    finally:
        runtime.close(token)
        inst.unbind_all()
        for m, mode in modes.items():
            m.training = mode
    finder = SiteFinder(captured, frozenset(runtime.inplace_tags), auto_project=config.auto_project)
    found, rejected = finder.find()
    tags = runtime.tags
    skipped = [SkippedInfo(_where(tags[r.tag]), r.reason) for r in rejected]
    kept = []
    for site in found:
        owner = tags[site.tag][0]
        if scope.allows(owner, model):
            kept.append(site)
        else:
            skipped.append(SkippedInfo(_where(tags[site.tag]), "outside the include/exclude scope"))
    finder.link_chains(kept)
    skipped += [SkippedInfo(r.where, _why_untagged(r, model, inst)) for r in finder.untagged_sites()]
    specs, infos, per_owner = [], [], {}
    streams, notes = _stream_chains(kept, config)
    for site in sorted(kept, key=lambda s: finder.order[s.node]):
        key = tags[site.tag]
        owner = key[0]
        j = per_owner.get(owner, 0)
        per_owner[owner] = j + 1
        name = f"{owner}.site{j}" if owner else f"site{j}"
        carries = site.chain in streams
        window = min(site.position, 2 if carries else config.max_history)
        spec = SiteSpec(name, key, owner, site.chain, site.position, window, site.stream_first, streams=carries)
        spec.features = site.shape[-1] if carries and site.shape else None
        if site.origin is not None and site.origin_shape != site.shape:
            spec.projects = (site.origin_shape, site.shape)
        specs.append(spec)
        n = config.streams if carries else 1
        infos.append(SiteInfo(name, owner, site.chain, site.position, window, site.shape, config.mode, n))
    report = Report(type(model).__name__, captured.method, config, infos, skipped, notes)
    return specs, report, keep_hosting(runtime.followed, [s.key for s in specs])


def _stream_chains(sites: list, config: MHCConfig) -> tuple[set[int], list[str]]:
    """The chains that carry ``config.streams`` streams, and a note for each that cannot: n streams
    pass from one site to the next only where the next site adds to the previous site's output
    itself (through aliases), since the user's code between them would act on one stream only."""
    if config.stream_mode is None:
        return set(), []
    chains: dict[int, list] = {}
    for site in sites:
        chains.setdefault(site.chain, []).append(site)
    carrying, notes = set(), []
    for chain, members in sorted(chains.items()):
        members.sort(key=lambda s: s.position)
        broken = [s for s in members[1:] if not s.link_alias]
        if len(members) >= 2 and not broken:
            carrying.add(chain)
        elif len(members) >= 2:
            op = broken[0].link_op or "an op"
            notes.append(
                f"chain {chain} ({len(members)} sites) keeps history mixing (max_history={config.max_history}): "
                f"n streams need each site to add to the previous site's output itself, found {op!r} between "
                f"sites {broken[0].position - 1} and {broken[0].position} (a post-norm block or a projection)"
            )
    missing = sum(1 for s in sites if s.chain in carrying and not s.shape)
    if missing:
        notes.append(
            f"{missing} stream site(s) have no token-dependent maps (static H_pre/H_post/H_res only): their size "
            "needs the stream's shape; pass example_inputs="
        )
    return carrying, notes


def _why_untagged(rejected, model: nn.Module, inst: _Instrumenter) -> str:
    """The reason of an addition left out of the rewrite, with the error that kept the forward of the module
    that ran it from being rewritten (a decorator without functools.wraps, no source, ...), if any."""
    try:
        error = inst.cache.get(type(model.get_submodule(rejected.path)))
    except AttributeError:
        error = None
    return f"{rejected.reason}: {error}" if isinstance(error, RewriteError) else rejected.reason


def format_loc(loc: int | tuple) -> str:
    """``3`` for an add of the forward, ``3.1`` for add 1 of the helper its call 3 ran."""
    return ".".join(map(str, loc)) if isinstance(loc, tuple) else str(loc)


def _where(key) -> str:
    path, loc, n = key
    return f"{path or '(root)'} add#{format_loc(loc)}" + (f" (call {n})" if n else "")


def _install(model: nn.Module, config: MHCConfig, specs: list[SiteSpec], report: Report, followed: dict) -> None:
    runtime = SiteRuntime(config)
    runtime.report = report
    runtime.followed = followed
    inst = _Instrumenter(runtime)
    owners = {s.owner for s in specs}
    openers = {p for owner in owners for p in _prefixes(owner)}
    for path in sorted(openers, key=len):
        ok = inst.bind(model.get_submodule(path), path, scope_only_ok=path not in owners)
        if not ok:  # cannot happen: owners were rewritten during analysis
            raise RuntimeError(f"mhc_fx: the forward of {path!r} could not be rewritten")
    model.__dict__[RUNTIME] = runtime
    switched = _switch_fast_paths_off(model)
    if switched:
        report.notes.append(
            f"torch's fused Transformer inference path switched off on {len(switched)} module(s) "
            "(activation_relu_or_gelu / use_nested_tensor): its kernel would add the residual out of sight"
        )
    params.attach(model, config, specs)
    for spec in specs:
        runtime.sites[spec.key] = spec
    hf_model = hf.hf_model_of(model)
    if hf_model is None:
        report.notes.append(
            f"{report.capture} path: the model keeps its class, call signature, outputs, state_dict keys and "
            "deepcopy; torch.save of the whole module raises (save the state_dict)"
        )
        return
    hf.record_config(hf_model, {**config.to_dict(), "sites": len(specs)})
    if RUNTIME in hf_model.__dict__:  # it opens the scope (it is an ancestor of the sites)
        hf_model.__dict__["_set_gradient_checkpointing"] = types.MethodType(hf.set_gradient_checkpointing, hf_model)
    hf.wrap_checkpointing(model, runtime)
    if hf_model is model:
        report.notes.append(
            "Hugging Face path: class, generate() with the KV cache, save_pretrained and non-reentrant "
            "gradient checkpointing are kept; reentrant checkpointing raises"
        )
    else:
        report.notes.append(
            "peft path: the PeftModel keeps its class and generate(); its save_pretrained writes the adapter "
            "only, not the mixing logits (mhc.*): save model.state_dict() for those"
        )


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def is_converted(model: nn.Module) -> bool:
    """True if ``model`` was returned by `convert`."""
    return isinstance(model, nn.Module) and RUNTIME in model.__dict__


def _converted_inside(model: nn.Module) -> nn.Module | None:
    """The outermost converted module of ``model`` (itself, or one a wrapper such as peft's
    ``PeftModel`` or a ``torch.compile`` wrapper holds), None when there is none."""
    model = getattr(model, "_orig_mod", model)
    roots = [m for m in model.modules() if is_converted(m)]
    if not roots:
        return None
    runtimes = {id(m.__dict__[RUNTIME]) for m in roots}
    if len(runtimes) > 1:
        paths = [p for p, m in model.named_modules() if m.__dict__.get(PATH) == ""]
        raise ValueError(
            f"{type(model).__name__} holds {len(runtimes)} separately converted models ({', '.join(paths)}); "
            "pass each of them"
        )
    return roots[0]


def converted_root(model: nn.Module) -> nn.Module:
    """The converted model behind ``model``: ``model`` itself, its ``torch.compile`` wrapper's
    module, or the converted model a wrapper holds (``get_peft_model(convert(hf_model))``)."""
    _check_model(model)
    root = _converted_inside(model)
    if root is None:
        raise ValueError(
            f"expected a model returned by mhc_fx.convert (or one wrapping it), got {type(model).__name__}"
        )
    return root


def convert(
    model: nn.Module,
    mode: str = "mhc",
    *,
    max_history: int | None = None,
    streams: int = 1,
    sinkhorn_iters: int = 20,
    constraint: str = "simplex",
    epsilon: float = 0.05,
    stochastic: bool = False,
    temperature: float = 1.0,
    detach_history: bool = False,
    auto_project: bool = False,
    check_finite: bool = False,
    include: str | type | Iterable | None = None,
    exclude: str | type | Iterable | None = None,
    example_inputs=None,
    inplace: bool = False,
) -> nn.Module:
    """Turn the residual additions of ``model`` into (m)HC sites.

    Returns the converted model: the same object when ``inplace=True``, else a deep
    copy (the input is never modified). At init, ``mode="mhc"`` and
    ``mode="residual"`` compute exactly the original function. See
    ``docs/convert.md`` for what counts as a site and `explain` for the report.

    Args:
        model: any ``nn.Module`` (own models through ``torch.fx``; models fx cannot
            trace, such as Hugging Face ones, through ``torch.export``).
        mode, max_history, constraint, epsilon, stochastic, temperature,
            detach_history: see `MHCConfig` (``max_history`` defaults to 4; it sets the
            window of history mixing and does not combine with ``streams``).
        streams, sinkhorn_iters: ``streams=n`` (n >= 2, modes ``hc``/``mhc``): every chain
            that can carry them holds n parallel residual streams (DeepSeek's mHC; the
            original hyper-connections for ``hc``) instead of a history window; chains that
            cannot keep history mixing and `explain` says why (see `MHCConfig`).
        auto_project: a projection shortcut ``shortcut(x) + f(x)`` (a ResNet stage
            start) becomes a site that continues the chain of ``x``; the chain's older
            states reach the new shape through a learned map (pooling and a 1x1 conv,
            or a linear map of the last dim). Needs the shapes: fx-traced models need
            ``example_inputs``. Exact at init like every site.
        check_finite: raise ``FloatingPointError`` naming the site when a mixing weight
            or history state is not finite (eager debugging aid; syncs at every site).
        include / exclude: module-path globs (``"transformer.h.*"``) or module
            classes; a site is converted when its owning module (or an ancestor) is
            included and not excluded.
        example_inputs: a tensor, a tuple of args or a dict of kwargs; needed when fx
            cannot trace the model (built automatically for Hugging Face models), and
            gives fx-traced models shape checks.
        inplace: convert ``model`` itself instead of a copy.
    """
    _check_model(model)
    config = _config(
        max_history,
        mode=mode,
        streams=streams,
        sinkhorn_iters=sinkhorn_iters,
        constraint=constraint,
        epsilon=epsilon,
        temperature=temperature,
        stochastic=stochastic,
        detach_history=detach_history,
        auto_project=auto_project,
        check_finite=check_finite,
    )
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    if _converted_inside(model) is not None:
        raise ValueError("model is (or holds) a model converted by mhc_fx already; convert the original model instead")
    scope = Scope(include, exclude, model)
    specs, report, followed = _analyse(model, config, scope, example_inputs)
    if report.warning is not None:
        warnings.warn(report.warning, UserWarning, stacklevel=2)
    unmapped = sum(NEEDS_SHAPES in s.reason for s in report.skipped)
    if unmapped:
        warnings.warn(
            f"mhc_fx: auto_project=True left {unmapped} projection shortcut(s) as they are: auto_project needs the "
            "shapes of the states it maps; pass example_inputs=",
            UserWarning,
            stacklevel=2,
        )
    target = model if inplace else copy.deepcopy(model)
    _install(target, config, specs, report, followed)
    return target


def _config(max_history: int | None, **options) -> MHCConfig:
    """The validated config; ``max_history`` None takes `MHCConfig`'s default, and a given one is
    refused with ``streams`` > 1 (n streams replace the window)."""
    config = MHCConfig(**options, **({} if max_history is None else {"max_history": max_history}))
    if max_history is not None and config.streams > 1:
        raise ValueError(
            f"max_history={max_history!r} does not combine with streams={config.streams}: a chain carries n "
            f"streams instead of a history window (chains that cannot carry them use the default window, "
            f"{MHCConfig.max_history})"
        )
    return config


def explain(model: nn.Module, **options) -> Report:
    """The report of a converted model, or what `convert` would do to an original one
    (``options`` as for `convert`; the model is not modified)."""
    _check_model(model)
    root = _converted_inside(model)
    if root is not None:
        if options:
            raise TypeError("explain takes no options for a converted model")
        return root.__dict__[RUNTIME].report
    example_inputs = options.pop("example_inputs", None)
    include, exclude = options.pop("include", None), options.pop("exclude", None)
    mode = options.pop("mode", "mhc")
    config = _config(options.pop("max_history", None), mode=mode, **options)
    _, report, _ = _analyse(model, config, Scope(include, exclude, model), example_inputs)
    return report


def mixing_weights(model: nn.Module) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
    """``{site name: alpha}`` of a converted model: the projected weights (eval mode),
    oldest state first. Sites with a single state (chain starts) have alpha = [1]. A site whose
    chain carries n streams gives ``{"pre", "post", "res"}``: the static parts of its maps
    (`stream_modes.StreamMode.static_maps`)."""
    runtime = converted_root(model).__dict__[RUNTIME]
    out = {}
    with torch.no_grad():
        for spec in runtime.sites.values():
            if spec.holder is None:
                out[spec.name] = torch.eye(spec.window)[-1]
            elif spec.streams:
                maps = runtime.config.stream_mode.static_maps(spec.parameters(), runtime.config)
                out[spec.name] = {k: v.detach() for k, v in maps.items()}
            else:
                out[spec.name] = _project(spec.holder._parameters[spec.attr], runtime.config, training=False).detach()
    return out


def inject_mhc(model: nn.Module, target_class_name: str | None = None, **options) -> nn.Module:
    """Seed-compatible: convert ``model`` in place, scoped to modules whose class is
    named ``target_class_name`` (all residual sites when None). Options as for `convert`."""
    _check_model(model)
    include = None
    if target_class_name is not None:
        if not isinstance(target_class_name, str):
            raise TypeError(f"target_class_name must be a str, got {target_class_name!r}")
        include = [p for p, m in model.named_modules() if type(m).__name__ == target_class_name]
        if not include:
            raise ValueError(f"target_class_name {target_class_name!r} matches no module of the model")
    options.setdefault("inplace", True)
    return convert(model, include=include, **options)
