"""A griffe extension for the site: retain's code as griffe should read it, and its docstrings as Markdown.

- retain's docstrings keep their doctests in the text (pytest runs them) and may name things with Sphinx
  roles. Markdown reads ``>>>`` as a quote and ``x["key"]`` as a link, so each doctest (a ``>>>`` line and
  what follows it up to a blank line) is fenced as a ``pycon`` block, and ``:func:`name``` becomes
  ```name```.
- Strategies are pydantic dataclasses made by ``retain.strategies.base.params``; griffe only knows the
  standard library's decorator, so these are marked as dataclasses too: their fields become ``__init__``'s
  parameters, as they are at run time.

The source is not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|exc|obj|const):`~?([^`]+)`")
DATACLASS_DECORATORS = {"retain.strategies.base.params", "pydantic.dataclasses.dataclass"}


def fence_doctests(text: str) -> str:
    """``text`` with every doctest outside a fenced block or an ``Examples:`` section put in a ``pycon`` fence.

    Args:
        text: a docstring's text.

    Returns:
        The text, doctests fenced, Sphinx roles written as code.
    """
    out: list[str] = []
    fenced = False
    indent: str | None = None
    examples: int | None = None  # the indentation of an ``Examples:`` section: griffe renders its doctests
    for line in text.splitlines():
        stripped = line.strip()
        depth = len(line) - len(line.lstrip())
        if examples is not None and stripped and depth <= examples:
            examples = None
        if stripped in ("Examples:", "Example:"):
            examples = depth
        if indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        if stripped.startswith("```"):
            fenced = not fenced
        elif (not fenced and indent is None and examples is None
              and (stripped == ">>>" or stripped.startswith(">>> "))):
            indent = line[:depth]
            if out and out[-1].strip():
                out.append("")  # a fence opens a block of its own
            out.append(f"{indent}```pycon")
        out.append(line if fenced or indent is not None else ROLE.sub(r"`\1`", line))
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


class Retain(griffe.Extension):
    """Fence the doctests, rewrite the roles, and mark pydantic dataclasses as dataclasses."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring before it is parsed; mark it a dataclass if its decorator makes one.

        Args:
            obj: the object griffe has just created.
            **kwargs: the rest of the event's arguments (unused).
        """
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
        if isinstance(obj, griffe.Class):
            for decorator in obj.decorators:
                if decorator.callable_path in DATACLASS_DECORATORS:
                    # griffe's dataclasses extension then writes __init__ from the fields, the parents' first
                    decorator.value = griffe.ExprName("dataclass", parent="dataclasses")
                    obj.labels.add("dataclass")
