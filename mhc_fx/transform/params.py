"""Where a converted model keeps its new tensors: the ``mhc.`` namespace.

Per-site logits live in sub-modules of an ``mhc`` child named after the owning
module's path (``mhc.transformer.h.0.site1``), beside ``mhc.config_record``: the
conversion options as JSON bytes, so that loading a checkpoint converted with
other options is a clear error. A container root (``nn.Sequential``,
``nn.ModuleList``, ``nn.ModuleDict``) would iterate or index a new child, so
there the same names are registered directly on the root instead.
"""

from __future__ import annotations

import dataclasses
import json
import types

import torch
from torch import nn

from .. import modes
from ..config import MHCConfig
from . import projecting
from .runtime import SiteSpec

PARAMS = "mhc"
RECORD = "config_record"
_DEFAULTS = MHCConfig().to_dict()  # what a record written before an option existed means by its absence
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def encode(config: MHCConfig) -> torch.Tensor:
    return torch.tensor(list(json.dumps(config.to_dict(), sort_keys=True).encode()), dtype=torch.uint8)


def decode(record: torch.Tensor) -> str:
    return bytes(record.tolist()).decode()


def _check_record(config: MHCConfig, theirs: torch.Tensor | None) -> None:
    """Refuse a state dict whose record differs from ``config`` (compared with the options
    themselves, not with this model's buffer: after ``to_empty()`` that holds garbage)."""
    if theirs is None or theirs.device.type == "meta":
        return
    ours = encode(config)
    if not torch.equal(theirs.cpu(), ours):
        try:
            saved = json.loads(decode(theirs))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"the checkpoint's {RECORD} is not an mhc_fx record") from None
        mine = json.loads(decode(ours))
        saved = {**_DEFAULTS, **saved}
        diff = {k: (saved.get(k), mine.get(k)) for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)}
        if not diff:
            return
        raise ValueError(
            "this checkpoint was converted with other mhc_fx options (option: (checkpoint, model)): "
            f"{diff}; convert with the checkpoint's options, e.g. mhc_fx.from_pretrained"
        )


class SiteParameters(nn.Module):
    """The ``mhc`` child: per-site logits plus the conversion record."""

    def __init__(self, config: MHCConfig) -> None:
        super().__init__()
        self.config = config
        self.inits: dict[str, Init] = {}  # how to re-create each parameter's init (`reset_parameters`)
        self.register_buffer(RECORD, encode(config))
        self.register_load_state_dict_pre_hook(self._check)

    def reset_parameters(self) -> None:
        """Back to the init (exact identity for mhc). Done by itself when the model leaves the
        ``meta`` device (``to_empty()``), so a model converted there needs no extra call."""
        _reset(self.config, self.config_record, list(self.named_parameters()), self.inits)

    def _apply(self, fn, recurse: bool = True):
        return _reinit_after_meta(
            self, lambda: super(SiteParameters, self)._apply(fn, recurse), self.config, self.inits
        )

    @staticmethod
    def _check(module, state_dict, prefix, *args) -> None:
        _check_record(module.config, state_dict.get(prefix + RECORD))

    def extra_repr(self) -> str:
        return decode(self.config_record)


@dataclasses.dataclass(frozen=True)
class Init:
    """What a parameter's init depends on: the site's mode (n streams or a window), the name
    suffix, K, the position in the chain and the stream's last dim."""

    streams: bool
    suffix: str
    window: int
    position: int
    features: int | None


def _reset(
    config: MHCConfig, record: torch.Tensor, tensors: list[tuple[str, torch.Tensor]], inits: dict[str, Init]
) -> None:
    with torch.no_grad():
        record.copy_(encode(config))
        for name, p in tensors:
            if name.endswith(projecting.SUFFIX):
                projecting.init_weight_(p)
            else:
                init = inits[name.removeprefix(PARAMS + ".")]
                mode = _mode_of(config, init.streams)
                mode.reset_(config, init.suffix, p, init.window, init.position, init.features)


def _mode_of(config: MHCConfig, streams: bool) -> modes.Mode:
    """The mode of a site whose chain carries n streams (``streams``) or mixes a window."""
    return config.stream_mode if streams else config.site_mode


def _store_tensors(module: nn.Module) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """(record, named parameters) of a converted model's store: the ``mhc`` child, or (container
    root) the ``mhc.*`` entries of the root itself."""
    if isinstance(module, SiteParameters):
        return module.config_record, list(module.named_parameters())
    tensors = [(name, p) for name, p in module._parameters.items() if name.startswith(PARAMS + ".")]
    return module._buffers[f"{PARAMS}.{RECORD}"], tensors


def _reinit_after_meta(module: nn.Module, apply, config: MHCConfig, inits: dict[str, Init]):
    """Run ``apply`` (``Module._apply``); if it moved the store off the ``meta`` device
    (``to_empty``), put the logits and the record back to their init: uninitialised memory
    would otherwise be read as mixing weights."""
    was_meta = _store_tensors(module)[0].device.type == "meta"
    result = apply()
    record, logits = _store_tensors(module)
    if was_meta and record.device.type != "meta":
        _reset(config, record, logits, inits)
    return result


def _flat_apply(self, fn, recurse: bool = True):
    """``_apply`` of a container root that holds the store itself (see `_reinit_after_meta`)."""
    runtime = self.__dict__["_mhc_fx_runtime"]
    return _reinit_after_meta(self, lambda: type(self)._apply(self, fn, recurse), runtime.config, runtime.inits)


def _holder(store: nn.Module, owner: str) -> nn.Module:
    holder = store
    for part in owner.split(".") if owner else []:
        if part not in holder._modules:
            holder.add_module(part, nn.Module())
        holder = holder._modules[part]
    return holder


def _flat_record_check(module, state_dict, prefix, *args) -> None:
    _check_record(module.__dict__["_mhc_fx_runtime"].config, state_dict.get(f"{prefix}{PARAMS}.{RECORD}"))


def _accept_flat_keys(module, incompatible) -> None:
    # load_state_dict flags "mhc.x" as unexpected because "mhc" is no child module.
    ours = {k for k in (*module._parameters, *module._buffers) if k.startswith(PARAMS + ".")}
    incompatible.unexpected_keys[:] = [k for k in incompatible.unexpected_keys if k not in ours]


def attach(model: nn.Module, config: MHCConfig, specs: list[SiteSpec]) -> None:
    """Create the parameters of every site that has any (its mode decides: logits for K >= 2 in
    hc/mhc, the stream maps of an n-stream site) and point each spec's ``holder``/``attr`` at them."""
    if not specs:
        return  # nothing to store: the model keeps exactly its own state_dict
    if PARAMS in model._modules or hasattr(model, PARAMS):
        raise ValueError(f"the model already has an attribute {PARAMS!r}; mhc_fx stores its weights there")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    store = SiteParameters(config).to(device)
    for spec in specs:
        initial = _mode_of(config, spec.streams).parameters(config, spec.window, spec.position, spec.features)
        if initial:
            spec.holder = _holder(store, spec.owner)
            spec.attr = spec.name.rsplit(".", 1)[-1]
            spec.suffixes = tuple(initial)
            for suffix, value in initial.items():
                spec.holder.register_parameter(spec.attr + suffix, nn.Parameter(value.to(device)))
                init = Init(spec.streams, suffix, spec.window, spec.position, spec.features)
                store.inits[spec.name + suffix] = init
            if spec.projects is not None:
                weight = projecting.new_weight(*spec.projects, device)
                spec.holder.register_parameter(spec.attr + projecting.SUFFIX, nn.Parameter(weight))
    if not isinstance(model, _CONTAINERS):
        model.add_module(PARAMS, store)
        return
    # Container root: dotted names straight in the root's tables (register_* refuses dots).
    for name, tensor in store.named_parameters():
        model._parameters[f"{PARAMS}.{name}"] = tensor
    model._buffers[f"{PARAMS}.{RECORD}"] = store.config_record
    model.__dict__["_mhc_fx_runtime"].inits = store.inits
    model.register_load_state_dict_pre_hook(_flat_record_check)
    model.__dict__["_apply"] = types.MethodType(_flat_apply, model)
    model.register_load_state_dict_post_hook(_accept_flat_keys)
    for spec in specs:
        if spec.holder is not None:
            spec.holder, spec.attr = model, f"{PARAMS}.{spec.owner + '.' if spec.owner else ''}{spec.attr}"
