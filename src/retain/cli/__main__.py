"""``python -m retain.cli``: the command line, as ``python -m retain``."""

import sys

from retain.cli import main

if __name__ == "__main__":
    sys.exit(main())
