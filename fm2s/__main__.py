"""``python -m fm2s``: the command line (same as the ``fm2s`` script)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
