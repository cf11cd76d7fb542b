"""Where a converted model keeps its new tensors: the ``mhc.`` namespace.

Per-site logits live in sub-modules of an ``mhc`` child named after the owning
module's path (``mhc.transformer.h.0.site1``), beside ``mhc.config_record``: the
conversion options as JSON bytes, so that loading a checkpoint converted with
other options is a clear error. A container root (``nn.Sequential``,
``nn.ModuleList``, ``nn.ModuleDict``) would iterate or index a new child, so
there the same names are registered directly on the root instead.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from ..config import MHCConfig
from ..projections import initial_logits
from .runtime import SiteSpec

PARAMS = "mhc"
RECORD = "config_record"
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def encode(config: MHCConfig) -> torch.Tensor:
    return torch.tensor(list(json.dumps(config.to_dict(), sort_keys=True).encode()), dtype=torch.uint8)


def decode(record: torch.Tensor) -> str:
    return bytes(record.tolist()).decode()


def _check_record(ours: torch.Tensor, theirs: torch.Tensor | None) -> None:
    if theirs is None or "meta" in (theirs.device.type, ours.device.type):
        return
    if not torch.equal(theirs.cpu(), ours.cpu()):
        saved, mine = json.loads(decode(theirs)), json.loads(decode(ours))
        diff = {k: (saved.get(k), mine.get(k)) for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)}
        raise ValueError(
            "this checkpoint was converted with other mhc_fx options (option: (checkpoint, model)): "
            f"{diff}; convert with the checkpoint's options, e.g. mhc_fx.from_pretrained"
        )


class SiteParameters(nn.Module):
    """The ``mhc`` child: per-site logits plus the conversion record."""

    def __init__(self, config: MHCConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer(RECORD, encode(config))
        self.register_load_state_dict_pre_hook(self._check)

    def reset_parameters(self) -> None:
        """Back to the init (exact identity for mhc): e.g. after ``to_empty()`` of a model
        converted on the ``meta`` device."""
        with torch.no_grad():
            self.config_record.copy_(encode(self.config))
            for p in self.parameters():
                p.copy_(initial_logits(self.config, p.shape[-1]))

    @staticmethod
    def _check(module, state_dict, prefix, *args) -> None:
        _check_record(module.config_record, state_dict.get(prefix + RECORD))

    def extra_repr(self) -> str:
        return decode(self.config_record)


def _holder(store: nn.Module, owner: str) -> nn.Module:
    holder = store
    for part in owner.split(".") if owner else []:
        if part not in holder._modules:
            holder.add_module(part, nn.Module())
        holder = holder._modules[part]
    return holder


def _flat_record_check(module, state_dict, prefix, *args) -> None:
    name = f"{PARAMS}.{RECORD}"
    _check_record(module._buffers[name], state_dict.get(prefix + name))


def _accept_flat_keys(module, incompatible) -> None:
    # load_state_dict flags "mhc.x" as unexpected because "mhc" is no child module.
    ours = {k for k in (*module._parameters, *module._buffers) if k.startswith(PARAMS + ".")}
    incompatible.unexpected_keys[:] = [k for k in incompatible.unexpected_keys if k not in ours]


def attach(model: nn.Module, config: MHCConfig, specs: list[SiteSpec]) -> None:
    """Create the logits of every site with K >= 2 (not in residual mode) and point
    each spec's ``holder``/``attr`` at them."""
    if not specs:
        return  # nothing to store: the model keeps exactly its own state_dict
    if PARAMS in model._modules or hasattr(model, PARAMS):
        raise ValueError(f"the model already has an attribute {PARAMS!r}; mhc_fx stores its weights there")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    store = SiteParameters(config).to(device)
    for spec in specs:
        if spec.window > 1 and config.mode != "residual":
            spec.holder = _holder(store, spec.owner)
            spec.attr = spec.name.rsplit(".", 1)[-1]
            theta = initial_logits(config, spec.window).to(device)
            spec.holder.register_parameter(spec.attr, nn.Parameter(theta))
    if not isinstance(model, _CONTAINERS):
        model.add_module(PARAMS, store)
        return
    # Container root: dotted names straight in the root's tables (register_* refuses dots).
    for name, tensor in store.named_parameters():
        model._parameters[f"{PARAMS}.{name}"] = tensor
    model._buffers[f"{PARAMS}.{RECORD}"] = store.config_record
    model.register_load_state_dict_pre_hook(_flat_record_check)
    model.register_load_state_dict_post_hook(_accept_flat_keys)
    for spec in specs:
        if spec.holder is not None:
            spec.holder, spec.attr = model, f"{PARAMS}.{spec.name}"
