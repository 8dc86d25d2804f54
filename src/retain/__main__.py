"""``python -m retain`` (and ``torchrun -m retain``): the command line."""

import sys

from retain.cli import main

if __name__ == "__main__":
    sys.exit(main())
