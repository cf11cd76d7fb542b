"""Test-only: let a torchvision whose C++ ops do not load be imported (used by .ci/run).

PyPI's torchvision wheel for torch 2.13 is a CUDA build; against the CPU torch its
``torchvision/_C.so`` does not load, and ``import torchvision`` then fails in
``torchvision/_meta_registrations.py``, which registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` whether the ops exist or not:

    RuntimeError: operator torchvision::nms does not exist

(``timm``, ``transformers``' vision models and ``diffusers`` import torchvision when it is
installed, so they fail too). None of the models the tests build use those ops (they are
detection ops: nms, roi_align, deform_conv2d). This script rewrites those two
registrations in the installed file so that, like the file's other registrations, they
are skipped when ``torchvision.extension._has_ops()`` is false. It changes nothing when the
ops load, and running it twice is harmless. mhc_fx itself never imports torchvision.

    python .ci/patch_torchvision.py        # patch the torchvision of this interpreter
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MARK = "# patched by mhc_fx .ci/patch_torchvision.py"
OLD = '@torch.library.register_fake("torchvision::'
NEW = '@_register_fake_if_ops("torchvision::'
HELPER = f"""
{MARK}: skip fake kernels of ops that were not loaded (see that script)
def _register_fake_if_ops(qualname):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(qualname)
    return lambda fn: fn

"""


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed; nothing to do")
        return 0
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if MARK in text:
        print(f"patch_torchvision: {path} is already patched")
        return 0
    if OLD not in text:
        print(f"patch_torchvision: {path} has no unconditional registration; nothing to do")
        return 0
    anchor = "\n\n@functools.lru_cache(None)\ndef get_meta_lib():"
    if anchor not in text:
        print(f"patch_torchvision: {path} does not look as expected; not patched", file=sys.stderr)
        return 1
    text = text.replace(anchor, "\n" + HELPER.rstrip("\n") + "\n" + anchor, 1).replace(OLD, NEW)
    path.write_text(text)
    print(f"patch_torchvision: patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
