"""Metrics layer: the accuracy matrix, everything derived from it, and the cost of training."""

from retain.metrics.accuracy import (
    accuracy_curve,
    avalanche_forgetting,
    average_accuracy,
    bwt,
    forgetting,
    forgetting_per_experience,
    fwt,
    stream_accuracy,
    summarize,
)
from retain.metrics.cost import PeakMemory
from retain.metrics.results import (
    Consolidation,
    ExperienceInfo,
    ExperimentResult,
    MethodResult,
    Metrics,
    OnlineResult,
    SeedRun,
    StreamInfo,
    Summary,
)

__all__ = [
    "Consolidation",
    "ExperienceInfo",
    "ExperimentResult",
    "MethodResult",
    "Metrics",
    "OnlineResult",
    "PeakMemory",
    "SeedRun",
    "StreamInfo",
    "Summary",
    "accuracy_curve",
    "average_accuracy",
    "avalanche_forgetting",
    "bwt",
    "forgetting",
    "forgetting_per_experience",
    "fwt",
    "stream_accuracy",
    "summarize",
]
