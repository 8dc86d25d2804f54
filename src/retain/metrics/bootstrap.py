"""How sure a drop is: a paired bootstrap bound on the mean fall of per-row scores between two versions."""

from __future__ import annotations

import torch
from torch import Tensor


def drop_bound(before: Tensor, after: Tensor, confidence: float = 0.95, resamples: int = 1000, seed: int = 0
               ) -> float:
    """The lower ``confidence`` bound of the mean drop ``before - after`` of per-row scores of the
    same rows (resampled in pairs): the drop at least this large with that confidence.

    >>> before, after = torch.ones(200), torch.cat([torch.zeros(20), torch.ones(180)])  # 10% of rows lost
    >>> 0.05 < drop_bound(before, after) < 0.1
    True
    >>> drop_bound(torch.ones(4), torch.tensor([1.0, 1.0, 1.0, 0.0])) <= 0.0  # one row of four: could be chance
    True
    """
    if before.shape != after.shape or not len(before):
        raise ValueError(f"give per-row scores of the same rows, got {tuple(before.shape)} and {tuple(after.shape)}")
    drops = (before - after).double()
    g = torch.Generator().manual_seed(seed)
    means = drops[torch.randint(len(drops), (resamples, len(drops)), generator=g)].mean(1)
    return float(torch.quantile(means, 1 - confidence))
