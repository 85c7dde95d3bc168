"""``python -m torchrepro``: the command line."""

from __future__ import annotations

import sys

from torchrepro.cli import main

sys.exit(main())
