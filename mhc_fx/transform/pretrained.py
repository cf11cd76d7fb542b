"""Reload a converted Hugging Face checkpoint in one call.

``save_pretrained`` of a converted model writes the original weights, the
``mhc.`` weights, and the conversion options in ``config.json`` (key ``mhc_fx``).
`from_pretrained` loads the original class, converts it with exactly those
options, and loads the ``mhc.`` weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..config import MHCConfig
from .convert import convert
from .hf import CONFIG_KEY
from .params import PARAMS


def _read_site_weights(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            state.update(load_file(str(f)))
    else:
        for f in sorted(path.glob("pytorch_model*.bin")):
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return {k: v for k, v in state.items() if k.startswith(PARAMS + ".")}


def from_pretrained(model_class, path: str | os.PathLike, example_inputs=None, **kwargs) -> nn.Module:
    """Load ``model_class.from_pretrained(path, **kwargs)`` and restore its conversion.

    Raises ``ValueError`` when ``path`` was not saved from a converted model, or when
    the saved weights do not fit the recorded conversion.
    """
    if not isinstance(model_class, type) or not hasattr(model_class, "from_pretrained"):
        raise TypeError(f"model_class must be a Hugging Face model class, got {model_class!r}")
    directory = Path(path)
    if not directory.is_dir():
        raise ValueError(f"path must be a directory written by save_pretrained, got {str(path)!r}")
    model = model_class.from_pretrained(directory, **kwargs)
    record = getattr(model.config, CONFIG_KEY, None)
    if not isinstance(record, dict):
        raise ValueError(f"{str(path)!r} holds no mhc_fx record in its config: it was not saved from a converted model")
    record = dict(record)
    expected_sites = record.pop("sites", None)
    config = MHCConfig.from_dict(record)
    options = {k: v for k, v in config.to_dict().items() if k != "version"}
    if config.streams > 1:  # the window is not an option of a stream conversion
        del options["max_history"]
    converted = convert(model, inplace=True, example_inputs=example_inputs, **options)
    report = converted.__dict__["_mhc_fx_runtime"].report
    if expected_sites is not None and expected_sites != len(report.sites):
        raise ValueError(
            f"the checkpoint was converted with {expected_sites} sites but this model has {len(report.sites)}"
        )
    state = _read_site_weights(directory)
    result = converted.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(PARAMS + ".")]
    if missing:
        raise ValueError(f"the checkpoint lacks mixing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return converted
