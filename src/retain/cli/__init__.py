"""The ``retain`` command line: thin wiring of config, experiment and report."""

from __future__ import annotations

import os
import sys

from retain.cli.errors import Reported
from retain.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments) names; its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Reported:  # the command printed its error
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
