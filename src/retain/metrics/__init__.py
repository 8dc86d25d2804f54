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

__all__ = [
    "PeakMemory",
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
