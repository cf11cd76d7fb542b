"""``python -m mhc_fx``: the end-to-end demo (see mhc_fx/demo/cli.py)."""

import sys

from .demo.cli import main

sys.exit(main())
