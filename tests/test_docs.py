"""docs/api.md documents every public name of mhc_fx with its current signature.

``python -m tests.test_docs`` prints the signature lines the reference must hold.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import mhc_fx
from mhc_fx import projections

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def signature(name: str, obj) -> str:
    """``name(params)`` as docs/api.md writes it: `inspect.signature` without annotations."""
    sig = inspect.signature(obj)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return f"{name}{sig.replace(parameters=params, return_annotation=inspect.Signature.empty)}"


def expected_lines() -> list[str]:
    lines = [f"mhc_fx.{signature(n, getattr(mhc_fx, n))}" for n in mhc_fx.__all__ if callable(getattr(mhc_fx, n))]
    math = [f for n, f in vars(projections).items() if inspect.isfunction(f) and f.__module__ == projections.__name__]
    return lines + [signature(f.__name__, f) for f in math if not f.__name__.startswith("_")]


def test_every_public_name_has_a_section():
    text = API.read_text()
    missing = [name for name in mhc_fx.__all__ if f"### `{name}`" not in text]
    assert not missing, f"docs/api.md lacks a section for {missing}"


def test_signatures_in_the_reference_are_current():
    text = API.read_text()
    stale = [line for line in expected_lines() if line not in text]
    assert not stale, "docs/api.md lacks these current signatures:\n" + "\n".join(stale)


def test_weight_logger_methods_are_documented():
    text = API.read_text()
    for method in ("step", "to_rows", "plot_history"):
        sig = signature(method, getattr(mhc_fx.WeightLogger, method)).replace("(self, ", "(").replace("(self)", "()")
        assert sig in text


if __name__ == "__main__":
    print("\n".join(expected_lines()))
