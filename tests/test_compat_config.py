"""`mhc_fx.compat`: the package's module paths, its mutable default config and its TOML loading."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

import mhc_fx
from mhc_fx import compat
from mhc_fx.compat import _warn


@pytest.fixture
def fresh_compat_state():
    """Library defaults and unshown one-time warnings before the test; the defaults restored after."""
    compat.set_default_config(compat.MHCConfig())
    _warn.reset()
    yield
    compat.set_default_config(compat.MHCConfig())
    _warn.reset()


# Every module of the package's PyTorch part, with the public names it defines or re-exports.
PACKAGE_MODULES = {
    "": [
        "HistoryBuffer", "MHCSkip", "MHCSequential", "set_seed", "inject_mhc", "inject_mhc_default",
        "ForwardProfiler", "compile_model", "autocast_context", "get_preset", "MHCConfig", "get_default_config",
        "set_default_config", "load_config_from_toml", "logger",
    ],
    "config": [
        "MHCConfig", "get_default_config", "set_default_config", "resolve_default", "load_config_from_toml",
        "load_config_from_toml_optional",
    ],
    "presets": ["get_preset"],
    "version": ["__version__"],
    "constraints": ["project_simplex", "project_identity_preserving", "project_doubly_stochastic"],
    "constraints.simplex": ["project_simplex"],
    "constraints.identity": ["project_identity_preserving"],
    "constraints.matrix": ["project_doubly_stochastic"],
    "layers": [
        "HistoryBuffer", "MHCSkip", "MHCSequential", "MatrixMHCSkip", "MHCConv2d", "MHCBasicBlock", "MHCBottleneck",
    ],
    "layers.history_buffer": ["HistoryBuffer"],
    "layers.mhc_skip": ["MHCSkip"],
    "layers.managed": ["MHCSequential", "MHCSkip", "HistoryBuffer"],
    "layers.matrix_skip": ["MatrixMHCSkip"],
    "layers.conv_mhc": ["MHCConv2d", "MHCBasicBlock", "MHCBottleneck", "MHCSkip", "HistoryBuffer"],
    "utils": [
        "set_seed", "get_logger", "ensure_list", "get_last_k", "inject_mhc", "inject_mhc_default", "ForwardProfiler",
        "compile_model", "autocast_context", "plot_mixing_weights", "plot_gradient_flow", "plot_history_contribution",
        "create_training_dashboard", "extract_mixing_weights",
    ],
    "utils.compat": ["compile_model", "autocast_context"],
    "utils.decorators": ["mhc_compatible"],
    "utils.injection": ["InjectedMHC", "inject_mhc", "inject_mhc_default", "MHCSkip", "HistoryBuffer"],
    "utils.lightning_callback": [],  # MHCLightningCallback needs Lightning: test_compat_utils.py
    "utils.logging": ["get_logger"],
    "utils.profiling": ["ForwardProfiler"],
    "utils.seed": ["set_seed"],
    "utils.tensor_ops": ["ensure_list", "get_last_k"],
    "utils.visualization": [
        "extract_mixing_weights", "plot_mixing_weights", "plot_gradient_flow", "plot_history_contribution",
        "create_training_dashboard",
    ],
}  # fmt: skip


@pytest.mark.parametrize("path", sorted(PACKAGE_MODULES))
def test_every_package_module_path_exists_with_its_names(path):
    module = importlib.import_module("mhc_fx.compat" + (f".{path}" if path else ""))
    for name in PACKAGE_MODULES[path]:
        obj = getattr(module, name)
        # one implementation per name: a submodule re-exports the top-level object
        if hasattr(compat, name) and name != "__version__":
            assert obj is getattr(compat, name), f"{path}.{name} is another object than compat.{name}"
        if callable(obj) and not name.startswith("_"):
            assert obj.__doc__, f"{path}.{name} has no docstring"


def test_top_level_all_lists_the_package_names():
    for name in PACKAGE_MODULES[""]:
        assert name in compat.__all__
    assert compat.MHCSkip is not mhc_fx.MHCSkip and issubclass(compat.MHCSkip, mhc_fx.MHCSkip)
    assert issubclass(compat.MHCSequential, mhc_fx.MHCSequential)
    assert compat.logger.name == "mhc"
    assert importlib.import_module("mhc_fx.compat.version").__version__ == mhc_fx.__version__
    assert "being built" not in compat.__doc__


def test_config_has_the_package_fields_and_defaults(fresh_compat_state):
    defaults = {f.name: f.default for f in dataclasses.fields(compat.MHCConfig)}
    assert defaults == {
        "max_history": 4, "mode": "mhc", "constraint": "simplex", "epsilon": 0.1, "temperature": 1.0,
        "init": "identity", "detach_history": True, "clear_history_each_forward": True, "auto_project": False,
        "history_scope": "module",
    }  # fmt: skip
    config = compat.MHCConfig()
    config.max_history = 6  # mutable, like the package's
    assert config.to_mhc_fx() == mhc_fx.MHCConfig(max_history=6, epsilon=0.1, detach_history=True)
    back = compat.MHCConfig.from_mhc_fx(mhc_fx.MHCConfig(mode="hc", epsilon=0.05))
    assert (back.mode, back.epsilon, back.init) == ("hc", 0.05, "identity")
    with pytest.raises(TypeError, match="mhc_fx.MHCConfig"):
        compat.MHCConfig.from_mhc_fx({"mode": "hc"})


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("mode", "dense", ValueError, "mode must be one of"),
        ("init", "random", ValueError, "init must be one of"),
        ("history_scope", "layer", ValueError, "history_scope"),
        ("epsilon", 1.5, ValueError, "epsilon"),
        ("max_history", 0, ValueError, "max_history"),
        ("clear_history_each_forward", "yes", TypeError, "clear_history_each_forward"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value, error, message):
    with pytest.raises(error, match=message):
        compat.MHCConfig(**{field: value})


def test_default_config_drives_layers_built_afterwards(fresh_compat_state):
    assert compat.get_default_config() == compat.MHCConfig()
    compat.set_default_config(compat.MHCConfig(**compat.get_preset("stable")))
    skip = compat.MHCSkip()
    assert (skip.constraint, skip.epsilon) == ("identity", 0.1)
    # keywords apply on top of the current default, as the package's docs write it
    compat.set_default_config(max_history=6, constraint="simplex", epsilon=0.2)
    seq = compat.MHCSequential([torch.nn.Linear(3, 3)])
    assert seq.max_history == 6 and seq.skip_layers[0].max_history == 6
    assert seq.skip_layers[0].config.epsilon == 0.2 and seq.history_buffer.max_history == 6
    assert compat.MHCSkip(max_history=2).max_history == 2  # an explicit argument wins
    built = compat.MHCSkip()
    compat.get_default_config().max_history = 3  # the object itself is the default
    assert compat.MHCSkip().max_history == 3 and built.max_history == 6  # built layers keep theirs
    with pytest.raises(ValueError, match="unknown config keys"):
        compat.set_default_config(window=3)
    with pytest.raises(TypeError, match="compat.MHCConfig"):
        compat.set_default_config(mhc_fx.MHCConfig())
    assert importlib.import_module("mhc_fx.compat.config").resolve_default(None, "max_history") == 3


def test_load_config_from_toml(tmp_path, fresh_compat_state):
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[project]\nname = "x"\n\n[tool.mhc]\nmax_history = 8\nmode = "mhc"\nconstraint = "simplex"\n'
        "detach_history = true\ntemperature = 0.8\nauto_project = true\n"
    )
    config = compat.load_config_from_toml(path)
    assert config == compat.MHCConfig(max_history=8, temperature=0.8, auto_project=True)
    assert compat.get_default_config() == compat.MHCConfig()  # loading does not set it
    compat.set_default_config(config)
    assert compat.MHCSkip().temperature == 0.8
    assert compat.load_config_from_toml_optional(tmp_path / "missing.toml") is None
    with pytest.raises(FileNotFoundError):
        compat.load_config_from_toml(tmp_path / "missing.toml")
    empty = tmp_path / "empty.toml"
    empty.write_text("[tool.other]\nx = 1\n")
    assert compat.load_config_from_toml_optional(empty) == compat.MHCConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text("[tool.mhc]\nwindow = 3\n")
    with pytest.raises(ValueError, match=r"unknown config keys \['window'\]"):
        compat.load_config_from_toml(bad)


def test_migrating_guide_lists_every_package_name():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "migrating.md").read_text()
    names = {name for names in PACKAGE_MODULES.values() for name in names} | {"MHCLightningCallback", "InjectedMHC"}
    missing = sorted(name for name in names if f"{name}" not in text)
    assert not missing, f"docs/migrating.md does not list {missing}"
    for path in PACKAGE_MODULES:
        assert path.split(".")[-1] in text
    assert text.count("TensorFlow") == 1 and "are **out of scope**: mhc_fx supports PyTorch only" in text
