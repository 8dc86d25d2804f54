"""Quality layer: the checks that refuse a bad batch of incoming data before anything changes."""

from retain.quality.checks import BatchRefused, BatchReport, check_batch, check_inputs

__all__ = ["BatchRefused", "BatchReport", "check_batch", "check_inputs"]
