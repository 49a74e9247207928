"""``python -m bgfunctions``: the command line (see :mod:`bgfunctions.cli`)."""

from __future__ import annotations

import sys

from bgfunctions.cli import main

if __name__ == "__main__":
    sys.exit(main())
