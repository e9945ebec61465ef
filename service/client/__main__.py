"""`python -m service.client`: the client CLI (see service/client/cli.py)."""

from __future__ import annotations

import sys

from service.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
