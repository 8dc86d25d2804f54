"""Cost of training: wall time and peak memory of a block of work."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from types import TracebackType

import torch


class PeakMemory:
    """Measures wall time and peak memory of the ``with`` block.

    On CUDA the peak is ``torch.cuda.max_memory_allocated`` (reset on entry); on the CPU it is
    the process's peak resident set, reset on entry through ``/proc/self/clear_refs`` where
    Linux allows it (else the high-water mark since the process started).

    Args:
        device: the device the block runs on (``cpu``, ``cuda``, ``cuda:1``).

    Attributes:
        seconds: the block's wall time, once it ends.
        peak_mb: its peak memory in MiB, once it ends.

    >>> with PeakMemory("cpu") as cost:
    ...     _ = torch.zeros(1000)
    >>> cost.seconds >= 0 and cost.peak_mb > 0
    True
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.seconds = 0.0
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_rss_peak()
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _rss_peak_mb()
        self.seconds = time.perf_counter() - self._start


def _reset_rss_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
