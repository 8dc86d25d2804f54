"""Progress lines on stderr for the long steps of ``retain init`` and ``update``: reading, the gate, training, scoring.

A step gets one line: its name when it starts, the seconds it took when it ends; on a terminal the line
counts the seconds while it runs. The steps are the task kind's (:class:`retain.tasks.base.TaskKind`):
the command watches the kind of the :class:`~retain.loop.Project` it runs, so the loop itself prints nothing.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from retain.loop import Project


class Steps:
    """Writes a line per step to ``out``, live (counting seconds) when ``live``."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self._busy = False  # a step that calls another (scores inside parent_scores) is one step

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Report ``text`` while the block runs, then how long it took, on the same line."""
        if self._busy:
            yield
            return
        self._busy, start, done = True, time.monotonic(), threading.Event()
        self._write(f"{text} ...")
        ticker = None
        if self.live:
            def tick() -> None:
                while not done.wait(1.0):
                    self._write(f"\r\x1b[K{text} ... {time.monotonic() - start:.0f} s")

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
        try:
            yield
        finally:
            done.set()
            if ticker is not None:
                ticker.join()
            self._busy = False
            again = f"\r\x1b[K{text} ..." if self.live else ""  # the live line is rewritten with the time taken
            self._write(f"{again} {time.monotonic() - start:.1f} s\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def steps(asked: bool) -> Steps | None:
    """The progress lines a command shows: with ``--progress`` (``asked``), or when stderr is a terminal."""
    live = sys.stderr.isatty()
    return Steps(sys.stderr, live) if asked or live else None


def _rows(value: Any) -> int:
    return sum(len(v) for v in value.values()) if isinstance(value, dict) else len(value)


# The kind's steps a command reports, and their line from the step's arguments.
STEPS: dict[str, Callable[..., str]] = {
    "read_batch": lambda data, *_: f"reading {data}",
    "inspect": lambda rows, *_: f"gate: checking {_rows(rows)} rows",
    "fit": lambda learner, train, *_: f"training on {_rows(train)} rows",
    "scores": lambda learner, held, *_: f"scoring on {_rows(held)} held-out rows",
}


def watch(kind: Any, progress: Steps) -> None:
    """Report the long steps of ``kind`` (a project's task kind) on ``progress`` as they run. A step that could
    draw bars of its own (a translation's training) is asked not to: its line is its progress."""
    for name, line in STEPS.items():
        method = getattr(kind, name)
        quiet = "progress" in inspect.signature(method).parameters

        def reported(*args: Any, _method: Callable[..., Any] = method, _line: Callable[..., str] = line,
                     _quiet: bool = quiet, **kwargs: Any) -> Any:
            if _quiet:
                bound = inspect.signature(_method).bind(*args, **kwargs)
                bound.arguments["progress"] = False
                args, kwargs = bound.args, bound.kwargs
            with progress.step(_line(*args)):
                return _method(*args, **kwargs)

        setattr(kind, name, functools.wraps(method)(reported))


def watched(progress: Steps | None) -> type[Project]:
    """:class:`~retain.loop.Project`, or one whose steps are reported on ``progress`` (for
    ``Project.init`` too, which opens the project it makes itself)."""
    from retain.loop import Project

    if progress is None:
        return Project
    steps = progress  # narrowed: the class body below does not see the check

    class Watched(Project):
        def __init__(self, store: Any, progress_bars: bool = False) -> None:
            super().__init__(store, progress_bars)
            watch(self.kind, steps)

    return Watched
