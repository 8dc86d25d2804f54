"""Quality layer: the checks that refuse a bad batch of incoming data before anything changes."""

from retain.quality.checks import BatchRefused, BatchReport, check_batch, check_inputs
from retain.quality.gate import GatePolicy, GateReport, inspect

__all__ = ["BatchRefused", "BatchReport", "GatePolicy", "GateReport", "check_batch", "check_inputs", "inspect"]
