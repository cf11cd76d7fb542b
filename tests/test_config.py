"""`MHCConfig`: validation on entry, the floor, and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mhc_fx.config import CONFIG_VERSION, MHCConfig


def test_defaults():
    cfg = MHCConfig()
    assert (cfg.mode, cfg.max_history, cfg.constraint) == ("mhc", 4, "simplex")
    assert (cfg.epsilon, cfg.temperature) == (0.05, 1.0)
    assert (cfg.stochastic, cfg.detach_history, cfg.auto_project) == (False, False, False)


def test_numbers_are_normalised_to_float():
    cfg = MHCConfig(epsilon=0, temperature=2)
    assert type(cfg.epsilon) is float and cfg.epsilon == 0.0
    assert type(cfg.temperature) is float and cfg.temperature == 2.0


def test_frozen():
    cfg = MHCConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mode = "hc"


@pytest.mark.parametrize(
    "kwargs,floor",
    [
        (dict(mode="mhc", constraint="identity", epsilon=0.3), 0.3),
        (dict(mode="mhc", constraint="simplex", epsilon=0.3), None),
        (dict(mode="hc", constraint="identity", epsilon=0.3), None),
        (dict(mode="residual", constraint="identity"), None),
    ],
)
def test_floor(kwargs, floor):
    assert MHCConfig(**kwargs).floor == floor


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(mode="MHC"), ValueError, r"mode must be one of \('residual', 'hc', 'mhc'\), got 'MHC'"),
        (dict(mode=None), ValueError, "mode"),
        (dict(constraint="box"), ValueError, r"constraint must be one of \('simplex', 'identity'\), got 'box'"),
        (dict(max_history=0), ValueError, r"max_history must be an int >= 1, got 0"),
        (dict(max_history=1.0), TypeError, "max_history"),
        (dict(max_history=False), TypeError, "max_history"),
        (dict(epsilon=-1e-9), ValueError, r"epsilon must lie in \[0, 1\)"),
        (dict(epsilon=1), ValueError, r"epsilon must lie in \[0, 1\), got 1"),
        (dict(epsilon=float("inf")), ValueError, "epsilon must be finite"),
        (dict(epsilon=True), TypeError, "epsilon must be a real number"),
        (dict(epsilon=None), TypeError, "epsilon"),
        (dict(temperature=0), ValueError, r"temperature must be > 0, got 0"),
        (dict(temperature=-0.5), ValueError, "temperature"),
        (dict(temperature=float("nan")), ValueError, "temperature must be finite"),
        (dict(temperature="1"), TypeError, "temperature"),
        (dict(stochastic=1), TypeError, r"stochastic must be a bool"),
        (dict(detach_history="False"), TypeError, "detach_history"),
        (dict(auto_project=0), TypeError, "auto_project"),
        (dict(mode="residual", stochastic=True), ValueError, r"stochastic=True needs mode 'hc' or 'mhc'"),
    ],
)
def test_validation_names_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MHCConfig(**kwargs)


@pytest.mark.parametrize("mode", ["residual", "hc", "mhc"])
def test_valid_edge_values(mode):
    cfg = MHCConfig(mode=mode, max_history=1, epsilon=0.0, temperature=1e-3)
    assert cfg.max_history == 1
    assert MHCConfig(epsilon=0.999).epsilon == 0.999


@pytest.mark.parametrize(
    "cfg",
    [
        MHCConfig(),
        MHCConfig(mode="hc", max_history=7, temperature=0.7, stochastic=True),
        MHCConfig(mode="mhc", constraint="identity", epsilon=0.3, detach_history=True, auto_project=True),
        MHCConfig(mode="residual", max_history=2),
    ],
)
def test_to_dict_from_dict_round_trip_through_json(cfg):
    data = cfg.to_dict()
    assert data["version"] == CONFIG_VERSION
    assert set(data) == {"version"} | {f.name for f in dataclasses.fields(MHCConfig)}
    text = json.dumps(data)
    restored = MHCConfig.from_dict(json.loads(text))
    assert restored == cfg
    assert restored.to_dict() == data


def test_from_dict_does_not_mutate_its_input_and_accepts_a_missing_version():
    data = MHCConfig(mode="hc").to_dict()
    snapshot = dict(data)
    MHCConfig.from_dict(data)
    assert data == snapshot
    del data["version"]
    assert MHCConfig.from_dict(data) == MHCConfig(mode="hc")
    assert MHCConfig.from_dict({}) == MHCConfig()


def test_from_dict_rejects_unknown_keys_and_versions():
    data = MHCConfig().to_dict()
    with pytest.raises(ValueError, match=r"unknown config keys \['use_gating'\]"):
        MHCConfig.from_dict({**data, "use_gating": True})
    with pytest.raises(ValueError, match="version"):
        MHCConfig.from_dict({**data, "version": CONFIG_VERSION + 1})
    with pytest.raises(ValueError, match="temperature"):
        MHCConfig.from_dict({**data, "temperature": -1.0})
