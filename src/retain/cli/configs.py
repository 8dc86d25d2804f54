"""The config a command names: a run config with ``--seeds`` applied, or a translation config."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retain.config import RunConfig


def run_config(args: argparse.Namespace, loop: bool = False) -> RunConfig:
    """The run config named on the command line, with ``--seeds`` applied; ``loop``: for ``retain
    init`` (its data comes from ``--data``)."""
    from retain.config import load_config

    cfg = load_config(args.config, loop=loop)
    if args.seeds:
        cfg.seeds = args.seeds
    return cfg


def config_task(path: str) -> str:
    """The task kind a YAML config at ``path`` names (``task:``; a run config's is classification)."""
    from retain.config import ConfigError, read_yaml

    try:
        task = read_yaml(path).get("task")
    except ConfigError:
        return "classification"  # the run config's own reading reports what is wrong with the file
    return task if isinstance(task, str) and task else "classification"

