"""ER-ACE: experience replay with an asymmetric loss that keeps new classes from pushing old ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import PositiveInt

from retain.strategies.base import params
from retain.strategies.memory import Memory, MemoryStrategy


@params
class ERACE(MemoryStrategy):
    """ER with Asymmetric Cross-Entropy (Caccia et al. 2022, ICLR, "New Insights on Reducing
    Abrupt Representation Change in Online Continual Learning").

    Incoming samples are scored only among the classes present in their batch, so learning a
    new class does not push down the logits of old ones; replayed samples use the usual
    cross-entropy over all classes. The learner's loss is cross-entropy over every class, so
    this strategy's term swaps it: ``ACE(new) - CE(new) + CE(replayed)``. The reservoir memory
    is filled as samples stream in.
    """

    memory_size: PositiveInt = 200
    batch_size: PositiveInt | None = None

    online = True
    name = "er_ace"
    paper = 'Caccia et al. 2022, "New Insights on Reducing Abrupt Representation Change", ICLR'
    family = "replay"
    scenarios = ("class_incremental", "task_incremental")

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "reservoir")

    def loss(self, learner, x, y, t, logits):
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[y] = True
        asymmetric = F.cross_entropy(logits.masked_fill(~present, torch.finfo(logits.dtype).min), y)
        term = asymmetric - F.cross_entropy(logits, y)
        if len(self.memory_):
            m = self.memory_.sample(self.batch_size or len(y), learner.generator)
            out = learner.model(m["x"].to(x.device), m["t"].to(x.device))
            term = term + F.cross_entropy(out, m["y"].to(x.device))
        self.offer(learner, x, y, t)
        return term
