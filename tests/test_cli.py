"""``python -m mhc_fx``: the end-to-end demo runs, and bad input is one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mhc_fx.demo.cli import main
from mhc_fx.demo.data import batches, load_splits


def test_demo_runs_eagerly(capsys):
    code = main(["--steps", "3", "--no-compile", "--layers", "2", "--dim", "16", "--length", "16", "--batch", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 sites in 1 chains" in out
    assert "identical to the original at init: yes" in out
    assert "learned mixing weights" in out and "blocks.1.site1" in out
    assert "time per step" in out


def test_demo_with_streams(capsys):
    argv = ["--steps", "3", "--no-compile", "--layers", "2", "--dim", "16", "--length", "16", "--batch", "2"]
    code = main([*argv, "--streams", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "streams=4" in out and "identical to the original at init: yes" in out
    assert "H_pre / H_post" in out and "blocks.1.site1" in out


def test_demo_compiled_through_the_module_entry_point():
    args = ["--steps", "2", "--layers", "1", "--dim", "16", "--length", "16", "--batch", "2"]
    result = subprocess.run([sys.executable, "-m", "mhc_fx", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "compiled with backend=mhc" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no_such_module:factory"], "No module named"),
        (["--model", "nocolon"], "--model must look like"),
        (["--model", "math:pi"], "not a callable"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--max-history", "0"], "--max-history must be >= 1"),
        (["--streams", "0"], "--streams must be >= 1"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mhc_fx: error:") and message in err[0]


def test_stdlib_splits_are_by_file_and_deterministic():
    from mhc_fx.demo.data import _in_validation, stdlib_files

    files = stdlib_files()
    held_out = [f for f in files if _in_validation(f, 0.1)]
    assert 0 < len(held_out) < len(files) // 4  # about a tenth of the files, none in both splits
    train, val = load_splits(max_bytes=200_000)
    again_train, again_val = load_splits(max_bytes=200_000)
    assert len(train) == 200_000 and 0 < len(val) <= 200_000
    assert bytes(train[:1000].tolist()) == bytes(again_train[:1000].tolist())
    assert bytes(val[:1000].tolist()) == bytes(again_val[:1000].tolist())
    import torch

    x, y = next(batches(train, 3, 8, torch.Generator().manual_seed(0)))
    assert x.shape == y.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])
