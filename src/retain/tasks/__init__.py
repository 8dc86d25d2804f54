"""Task kinds: what classification, translation (and the kinds to come) each bring to one loop.

A kind is registered by existing: every :class:`TaskKind` subclass with a ``name`` in a module of
this package. A store records its kind in its config (``task``); stores made before kinds were
recorded still open (a config with a ``run`` section is a classifier's, a translation run's config
at the top level a translation store's).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from retain.store import ModelStore, StoreError
from retain.tasks.base import Prediction, Rows, TaskKind

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def _kinds(cls: type[TaskKind[Any]]) -> dict[str, type[TaskKind[Any]]]:
    found: dict[str, type[TaskKind[Any]]] = {}
    for sub in cls.__subclasses__():
        if "name" in vars(sub):
            found[sub.name] = sub
        found |= _kinds(sub)
    return found


TASKS: dict[str, type[TaskKind[Any]]] = _kinds(TaskKind)


def task_kind(name: str) -> type[TaskKind[Any]]:
    """The kind called ``name``; an unknown one is refused naming those there are.

    Args:
        name: a kind's name (``classification``, ``translation``, ...).

    Returns:
        The kind's class.

    Raises:
        StoreError: no kind is called ``name``.
    """
    if name not in TASKS:
        raise StoreError(f"task {name!r}: give one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


def stored_run(config: dict[str, Any]) -> tuple[str, dict[str, Any], float, int]:
    """A store's kind, run config, held-out fraction and seed, from the config it keeps.

    Args:
        config: the config the store keeps (:attr:`ModelStore.config`).

    Returns:
        The kind's name, its run config, the held-out fraction (0-1) and the seed.

    Raises:
        StoreError: the config is not one a retain store keeps.
    """
    if "run" in config:
        missing = [k for k in ("held_out", "seed") if k not in config]
        if missing:
            raise StoreError(f"the store's config has a run section but no {' or '.join(missing)}: not one "
                             "retain init made")
        return config.get("task", "classification"), config["run"], float(config["held_out"]), int(config["seed"])
    if config.get("task") == "translation":  # a translation store made before kinds were recorded
        return "translation", config, 0.2, int(config.get("seed", 0))
    raise StoreError("the store's config names no task kind and has no run section: not a retain store's")


def open_kind(store: ModelStore) -> tuple[TaskKind[Any], float, int]:
    """The kind of ``store`` built on the run config it keeps, its held-out fraction and seed.

    Args:
        store: the model store.

    Returns:
        The kind, the held-out fraction (0-1) and the seed.
    """
    name, run, held_out, seed = stored_run(store.config)
    return task_kind(name)(store, run), held_out, seed


def kind_of_config(config: Any) -> type[TaskKind[Any]]:
    """The kind whose validated config ``config`` is.

    Args:
        config: a validated run config (a :class:`~retain.config.RunConfig`, a translation config, ...).

    Returns:
        The kind's class.

    Raises:
        TypeError: ``config`` is no kind's config.
    """
    for kind in TASKS.values():
        if isinstance(config, kind.config_type):
            return kind
    raise TypeError(f"{type(config).__name__} is no task kind's config")


__all__ = ["TASKS", "Prediction", "Rows", "TaskKind", "kind_of_config", "open_kind", "stored_run", "task_kind"]
