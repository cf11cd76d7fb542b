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


def hf_model_of(model: nn.Module) -> nn.Module | None:
    """The ``PreTrainedModel`` that ``model`` is, or that a peft ``PeftModel`` wraps; else None."""
    if is_hf_model(model):
        return model
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        base = model.get_base_model()
        return base if is_hf_model(base) else None
    return None


def _sub(config, name: str, default):
    """``config.<name>``, else the vision config's (multimodal models keep it there)."""
    value = getattr(config, name, None)
    if value is None:
        value = getattr(getattr(config, "vision_config", None), name, None)
    return default if value is None else value


def example_inputs(model: nn.Module, batch: int = 2, length: int = 8) -> dict[str, Any]:
    """Small inputs for capturing a Hugging Face model's graph, built from its config: every input
    of its forward that mhc_fx knows how to build (token ids, images, raw audio, log-mel features),
    so that a multimodal model (CLIP: ``input_ids`` and ``pixel_values``) is captured whole."""
    config = model.config
    name = getattr(model, "main_input_name", "input_ids")
    params = inspect.signature(model.forward).parameters
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)  # never advance the user's global RNG

    def tokens() -> torch.Tensor:
        vocab = _sub(getattr(config, "text_config", None) or config, "vocab_size", 16)
        return torch.randint(0, max(vocab, 2), (batch, length), generator=gen)

    def images() -> torch.Tensor:
        size = _sub(config, "image_size", 32)
        size = size if isinstance(size, int) else size[0]
        return torch.randn(batch, _sub(config, "num_channels", 3), size, size, generator=gen)

    def audio() -> torch.Tensor:
        # raw waveform: long enough for the convolutional feature encoder to leave a few frames
        frames = 1
        for kernel, stride in zip(getattr(config, "conv_kernel", ()), getattr(config, "conv_stride", ())):
            frames = (frames - 1) * stride + kernel
        return torch.randn(batch, max(frames * 4, 400), generator=gen)

    def features() -> torch.Tensor:
        # log-mel features: Whisper's encoder wants exactly 2 x max_source_positions frames
        frames = 2 * getattr(config, "max_source_positions", 8)
        return torch.randn(batch, getattr(config, "num_mel_bins", 80), frames, generator=gen)

    builders = {"input_ids": tokens, "pixel_values": images, "input_values": audio, "input_features": features}
    if name not in builders:
        raise ValueError(
            f"cannot build example inputs for a {type(model).__name__} (main input {name!r}; mhc_fx builds "
            f"{sorted(builders)}); pass example_inputs={{...}}"
        )
    wanted = [name]
    if name == "input_ids" and "pixel_values" in params and hasattr(config, "vision_config"):
        wanted.append("pixel_values")  # a text-image model: both towers
    inputs: dict[str, Any] = {n: builders[n]().to(device) for n in wanted}
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        # encoder-decoder models that do not derive the decoder's inputs from input_ids (T5, Whisper)
        inputs["decoder_input_ids"] = tokens().to(device)
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
