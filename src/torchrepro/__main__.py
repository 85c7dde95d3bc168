"""``python -m torchrepro``: the same as the ``torchrepro`` command."""

from torchrepro.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
