"""``python -m adapterkit``: the same command as the ``adapterkit`` script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
