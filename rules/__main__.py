"""``python -m rules``: check, show (the default) or export the catalogue — see rules/cli.py."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
