"""``python -m benchmarks.gpu``: see the package docstring."""

from .run import main

main()
