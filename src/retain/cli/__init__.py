"""The ``retain`` command line: thin wiring of config, experiment and report."""

from __future__ import annotations

import errno
import os
import sys

from retain.cli.errors import Reported, message
from retain.cli.parser import build_parser

# Third-party chatter a command's user cannot act on: Hugging Face's download and weight-loading bars
# and advisory warnings. Set before those libraries are imported (they read it then); a user's own
# setting wins.
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_VERBOSITY": "error",
         "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments) names; its exit code."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except Reported:  # the command printed its error
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a full disk is no bug, whichever command was writing
        if err.errno != errno.ENOSPC:
            raise
        print(f"retain: {message(err)}", file=sys.stderr)
        return 2
