"""``python -m benchmarks.quality.lr_probe [--out DIR] [extra cli options]``: where does the plain residual
model struggle? Trains only the residual variant of the deepest --full model, one seed, at a ladder of
learning rates, for a short budget; the study's high learning rate is picked from this (docs/quality.md)."""

from __future__ import annotations

import sys

from . import cli
from .profiles import FULL

LADDER = ("3e-3", "1e-2", "3e-2", "1e-1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in argv:
        argv += ["--out", "quality-lr-probe"]
    defaults = [
        "--full",
        "--variants",
        "residual",
        "--depths",
        str(max(FULL.depths)),
        "--seeds",
        "0",
        "--lrs",
        *LADDER,
        "--steps",
        "150",
    ]
    return cli.main(defaults + argv)  # later options win


if __name__ == "__main__":
    sys.exit(main())
