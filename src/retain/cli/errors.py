"""How a command ends on an error its user can fix: one line ``retain: <message>`` on stderr, exit code 2."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from pydantic import ValidationError


class RunFolderError(ValueError):
    """The run's output folder cannot be used; the message says why and what to do."""


class CommandError(ValueError):
    """A command cannot run as asked (an argument, its data, a setting this machine cannot meet); the message
    says why and what to give instead."""


class Reported(Exception):
    """A command's error, already printed: :func:`retain.cli.main` ends with exit code 2."""


def user_errors() -> tuple[type[Exception], ...]:
    """What a user can cause and fix (a bad config, a missing data set or backbone package): a message, no traceback."""
    from retain.config import ConfigError
    from retain.data import DatasetNotFound
    from retain.data.files import FileError
    from retain.engine.learner import Diverged

    return ConfigError, DatasetNotFound, ImportError, RunFolderError, CommandError, FileError, Diverged


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full: ``OSError`` ENOSPC, or a database's own words for it
    (SQLite: "database or disk is full"; PostgreSQL: "... No space left on device")."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(getattr(err, "orig", None) or "")
    return "disk is full" in text or "No space left on device" in text


def message(err: BaseException, where: str | None = None) -> str:
    """The one line a caught error is reported as. A full disk is named as such, with the file (or ``where``:
    the store, say) it was writing to; a database error gives its driver's first line, not SQLAlchemy's text
    with the SQL statement and a link.

    >>> message(OSError(errno.ENOSPC, "No space left on device", "store/versions/3/model.safetensors"))
    'no space left on the device holding store/versions/3/model.safetensors: free some space and run the command again'
    """
    if _disk_full(err):
        path = getattr(err, "filename", None) or where
        holding = f" holding {path}" if path else ""
        return f"no space left on the device{holding}: free some space and run the command again"
    orig = getattr(err, "orig", None)  # a SQLAlchemy DBAPIError wraps the driver's exception
    if orig is not None:
        return f"the store's database{f' of {where}' if where else ''}: {_first_line(orig)}"
    return str(err)


def _caught(errors: tuple[type[Exception], ...], user: bool) -> tuple[type[Exception], ...]:
    return (*errors, *user_errors()) if user else errors


def _validation(invalid: str | None) -> tuple[type[Exception], ...]:
    if invalid is None:
        return ()
    from pydantic import ValidationError

    return (ValidationError,)


@contextmanager
def reported(*errors: type[Exception], user: bool = True, invalid: str | None = None,
             where: str | None = None) -> Iterator[None]:
    """Within it, ``errors`` and, with ``user``, :func:`user_errors` stop the command with their message and exit
    code 2 (by raising :class:`Reported`); with ``invalid``, a pydantic validation error is printed as
    ``retain: <invalid>:`` and a line per field; ``where`` (a store's folder) is named when the disk it was writing
    to is full (see :func:`message`). Anything else propagates as it is: a traceback means a bug.

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

        text = f"{invalid}:\n{format_errors(cast('ValidationError', err))}"  # what _validation catches
    except _caught(errors, user) as err:
        text = message(err, where)
    else:
        return
    print(f"retain: {text}", file=sys.stderr)
    raise Reported
