"""Tests and doctests run torch on one CPU thread.

Torch's default (one thread per core) collapses when other jobs share the cores: on 2 cores with
6 busy processes, the strategy tests took over 300 s with 2 threads and 56 s with 1 (14 s alone
either way), so with one thread a busy machine slows the suite in proportion to the share it gets.
"""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")  # for any subprocess a test starts
torch.set_num_threads(1)
