"""retain: keep a deployed model learning from new data without forgetting what it knew.

The names below are imported on first use, not with the package: ``retain --version`` and the
commands that only read a store's records start without loading torch (``benchmarks/cli_latency.py``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retain.data import Experience, Stream
    from retain.engine import Learner

__version__ = "0.2.0"
__all__ = ["Experience", "Learner", "Stream", "__version__"]
_LAZY = {"Experience": "retain.data", "Stream": "retain.data", "Learner": "retain.engine"}


def __getattr__(name: str) -> Any:
    """``retain.Learner`` and the others, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'retain' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
