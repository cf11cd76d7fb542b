"""Every example script and the notebook run end to end, so none of them can rot.

The scripts run as a user runs them (``python examples/<name>.py``, fewer steps where the script
takes ``--steps``); the notebook is executed through ``nbclient`` in a fresh kernel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# script, arguments, lines its output must hold
SCRIPTS = [
    (
        "convert_hf_gpt2.py",
        ["--steps", "20"],
        ["still a GPT2LMHeadModel: True", "identical to the original at init: True", "compiled with backend='mhc'"],
    ),
    (
        "resnet_cnn.py",
        ["--steps", "20"],
        [
            "7 sites in 3 chains, 2 additions skipped",
            "identical to the original at init (eval mode): True",
            "test accuracy",
        ],
    ),
    (
        "seed_api.py",
        ["--steps", "30"],
        ["equal to the residual stack at init: True", "6 sites in 1 chain(s)", "layer 5:"],
    ),
]


def test_every_example_is_tested():
    tested = {name for name, _, _ in SCRIPTS} | {"inspect_rewrite.ipynb"}
    assert {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".ipynb")} == tested


@pytest.mark.parametrize("name, args, expected", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_example_script_runs(name, args, expected):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for line in expected:
        assert line in result.stdout, result.stdout[-3000:]
    if "max |compiled - eager| = " in result.stdout:  # the HF example's compiled model equals its eager one
        assert float(result.stdout.split("max |compiled - eager| = ")[1].split()[0]) < 1e-4


def test_notebook_executes():
    try:
        import ipykernel  # noqa: F401
        import nbformat
        from nbclient import NotebookClient
    except ImportError as exc:
        pytest.skip(f"executing the notebook needs nbclient, nbformat and ipykernel ({exc}); pip install -e '.[test]'")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(EXAMPLES / "inspect_rewrite.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "blocks.2.site1" in html and "<table>" in html  # the site table, as HTML
    assert "→ blocks.0.site1" in html  # the before/after view
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4  # heat map, history, contributions, gradients
