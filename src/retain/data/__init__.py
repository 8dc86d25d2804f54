"""Data layer: experiences, streams, scenario builders and offline data sets."""

from retain.data.datasets import DATASETS, Dataset, DatasetNotFound, load_dataset
from retain.data.experience import Experience, Stream, split_held_out
from retain.data.online import OnlineBatch, OnlineStream
from retain.data.scenarios import (
    SCENARIOS,
    build_scenario,
    class_incremental,
    permuted,
    rotated,
    task_incremental,
)

__all__ = [
    "OnlineBatch",
    "OnlineStream",
    "DATASETS",
    "SCENARIOS",
    "Dataset",
    "DatasetNotFound",
    "Experience",
    "Stream",
    "build_scenario",
    "split_held_out",
    "class_incremental",
    "load_dataset",
    "permuted",
    "rotated",
    "task_incremental",
]
