"""Tests and doctests run torch on one CPU thread.

Torch's default (one thread per core) collapses when other jobs share the cores: on 2 cores with
6 busy processes, the strategy tests took over 300 s with 2 threads and 56 s with 1 (14 s alone
either way), so with one thread a busy machine slows the suite in proportion to the share it gets.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # for any subprocess a test starts
torch.set_num_threads(1)

# The longest single tests (a fresh virtual environment with the wheel; mypy over the package): started first,
# so that they run beside the rest instead of ending the run alone on one worker.
FIRST = ("tests/test_packaging.py", "tests/test_types.py")


def pytest_collection_modifyitems(items: list) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))
