"""Tuning a deployment: the stream a model store holds (``retain tune STORE``).

A store keeps the held-out rows of every batch its promoted version learned (already model
inputs: a frozen backbone's features where it has one). Each batch becomes an experience: its
rows cut, per class, into training rows (where the trials carve their validation slices) and a
test part that only the final report reads.
"""

from __future__ import annotations

from pathlib import Path

from retain.config import load_config
from retain.data import Experience, Stream, split_held_out
from retain.loop import Project
from retain.tuning.study import Source, TuneError

TEST_FRACTION = 0.3


def store_stream(project: Project) -> Stream:
    """The promoted line's batches as a stream, each split into training and test rows."""
    held = project.held_out()
    if len(held) < 2:
        raise TuneError(f"{project.store.path}: the promoted version learned {len(held)} batch(es); tuning the "
                        "knobs that keep old batches needs two or more")
    seed = int(project.store.config["seed"])
    experiences = []
    for k, (name, rows) in enumerate(held.items()):
        x, y, t = rows.x, rows.y, rows.t
        train, test = split_held_out(y, TEST_FRACTION, seed + k)
        experiences.append(Experience(x[train], y[train], x[test], y[test], id=k, t_train=t[train], t_test=t[test],
                                      metadata={"batch": name}))
    labels = project.store.labels()
    return Stream(experiences, n_classes=len(labels), name=f"{Path(project.store.path).name} batches",
                  class_names=labels)


def store_source(path: Path) -> Source:
    """A store's config (its ``tune:`` section included) and the stream of the batches it holds."""
    project = Project(path)
    source = Source(project.config, str(path), kind="store")
    source._stream = store_stream(project)
    return source


def read_source(path: str | Path) -> Source:
    """What ``retain tune PATH`` tunes: a config file, or a model store's folder.

    Args:
        path: a config file, or a model store's folder.

    Returns:
        The source: the config and, for a store, the stream of the batches it holds.
    """
    path = Path(path)
    return store_source(path) if path.is_dir() else Source(load_config(path), str(path))
