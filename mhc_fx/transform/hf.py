"""What Hugging Face models need: example inputs for capture, the recorded config,
and their gradient checkpointing guarded by `CheckpointGuard` (no reentrant checkpointing).

Imports of ``transformers`` stay lazy: mhc_fx does not depend on it.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn

from .checkpointing import CheckpointGuard
from .runtime import SiteRuntime

CONFIG_KEY = "mhc_fx"


def is_hf_model(model: nn.Module) -> bool:
    """True for a ``transformers.PreTrainedModel`` (without importing transformers)."""
    module = sys.modules.get("transformers")
    return module is not None and isinstance(model, module.PreTrainedModel)


def example_inputs(model: nn.Module, batch: int = 2, length: int = 8) -> dict[str, Any]:
    """Small inputs for capturing a Hugging Face model's graph, built from its config."""
    config = model.config
    name = getattr(model, "main_input_name", "input_ids")
    params = inspect.signature(model.forward).parameters
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)  # never advance the user's global RNG

    def tokens() -> torch.Tensor:
        vocab = getattr(config, "vocab_size", 16)
        return torch.randint(0, max(vocab, 2), (batch, length), generator=gen).to(device)

    if name == "pixel_values":
        size = getattr(config, "image_size", 32)
        size = size if isinstance(size, int) else size[0]
        channels = getattr(config, "num_channels", 3)
        inputs: dict[str, Any] = {name: torch.randn(batch, channels, size, size, generator=gen).to(device)}
    elif name in ("input_ids", "decoder_input_ids"):
        inputs = {name: tokens()}
    else:
        raise ValueError(
            f"cannot build example inputs for a {type(model).__name__} (main input {name!r}); pass example_inputs="
        )
    if getattr(config, "is_encoder_decoder", False) and name != "decoder_input_ids" and "decoder_input_ids" in params:
        # encoder-decoder models that do not derive the decoder's inputs from input_ids (T5)
        inputs["decoder_input_ids"] = tokens()
    if "use_cache" in params:
        inputs["use_cache"] = False
    return inputs


def record_config(model: nn.Module, data: dict) -> None:
    """Store the conversion options in ``model.config`` (written by ``save_pretrained``)."""
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, data)


def wrap_checkpointing(model: nn.Module, runtime: SiteRuntime) -> None:
    """Wrap every ``_gradient_checkpointing_func`` set on the model's modules."""
    for module in model.modules():
        func = module.__dict__.get("_gradient_checkpointing_func")
        if func is not None and not isinstance(func, CheckpointGuard):
            module._gradient_checkpointing_func = CheckpointGuard(func, runtime)


def set_gradient_checkpointing(self, *args, **kwargs):
    """Instance override of ``PreTrainedModel._set_gradient_checkpointing``: wraps what it sets."""
    result = type(self)._set_gradient_checkpointing(self, *args, **kwargs)
    wrap_checkpointing(self, self.__dict__["_mhc_fx_runtime"])
    return result
