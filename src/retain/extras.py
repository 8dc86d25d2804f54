"""Optional packages: a feature whose extra of retain is not installed says so in one line.

Torch-free, so that the store and the command line can check an extra before loading anything heavy.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__all__ = ["MissingExtra", "require", "require_extra"]


class MissingExtra(ImportError):
    """A feature's optional packages are not installed; the message names the extra that installs them."""


def require(module: str, extra: str) -> Any:
    """Import ``module``, or say in one line which extra of retain installs it.

    Args:
        module: the module to import (``"optuna"``, ``"cleanlab.filter"``).
        extra: the extra of ``retain`` whose install brings it (``"tune"``, ``"quality"``).

    Returns:
        The imported module.

    Raises:
        MissingExtra: ``module`` or a package above it is not installed.
        ImportError: it is installed but broken (one of its own imports or its version checks fails): raised as
            it came, since installing the extra again would not mend it.

    >>> require("json", "serve").__name__
    'json'
    >>> require("no_such_module_here", "tune")
    Traceback (most recent call last):
    ...
    retain.extras.MissingExtra: no_such_module_here is not installed: pip install 'retain[tune]'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or not (module == err.name or module.startswith(err.name + ".")):
            raise  # the package is there, something it imports is not: show that, not a wrong hint
        raise MissingExtra(f"{module.split('.')[0]} is not installed: pip install 'retain[{extra}]'") from err


def require_extra(extra: str, *modules: str) -> None:
    """Check that ``modules`` import before a feature of the ``extra`` starts; otherwise one line names the extra.

    Args:
        extra: the extra of ``retain`` that installs the modules.
        *modules: top-level module names (``"fastapi"``, ``"uvicorn"``).

    Raises:
        MissingExtra: one of them is not installed.
    """
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"{module} is not installed: pip install 'retain[{extra}]'")
