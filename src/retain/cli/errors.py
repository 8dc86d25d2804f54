"""How a command ends on an error its user can fix: one line ``retain: <message>`` on stderr, exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class RunFolderError(ValueError):
    """The run's output folder cannot be used; the message says why and what to do."""


class Reported(Exception):
    """A command's error, already printed: :func:`retain.cli.main` ends with exit code 2."""


def user_errors() -> tuple[type[Exception], ...]:
    """What a user can cause and fix (a bad config, a missing data set or backbone package): a message, no traceback."""
    from retain.config import ConfigError
    from retain.data import DatasetNotFound
    from retain.data.files import FileError
    from retain.engine.learner import Diverged

    return ConfigError, DatasetNotFound, ImportError, RunFolderError, FileError, Diverged


def _caught(errors: tuple[type[Exception], ...], user: bool) -> tuple[type[Exception], ...]:
    return (*errors, *user_errors()) if user else errors


def _validation(invalid: str | None) -> tuple[type[Exception], ...]:
    if invalid is None:
        return ()
    from pydantic import ValidationError

    return (ValidationError,)


@contextmanager
def reported(*errors: type[Exception], user: bool = True, invalid: str | None = None) -> Iterator[None]:
    """Within it, ``errors`` and, with ``user``, :func:`user_errors` stop the command with their message and exit
    code 2 (by raising :class:`Reported`); with ``invalid``, a pydantic validation error is printed as
    ``retain: <invalid>:`` and a line per field. Anything else propagates as it is: a traceback means a bug.

    The classes of :func:`user_errors` are imported only when an error arrives, so that a command starts fast.
    ``BrokenPipeError`` is never reported: it is output piped into e.g. ``head``, which ``main`` ends quietly.

    >>> try:
    ...     with reported(ValueError, user=False):  # prints "retain: --top-k: must be 1 or more" on stderr
    ...         raise ValueError("--top-k: must be 1 or more")
    ... except Reported:
    ...     print("exit code 2")
    exit code 2
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except _validation(invalid) as err:
        from retain.config import format_errors

        message = f"{invalid}:\n{format_errors(err)}"
    except _caught(errors, user) as err:
        message = str(err)
    else:
        return
    print(f"retain: {message}", file=sys.stderr)
    raise Reported
