"""ER-ACE: experience replay with an asymmetric loss that keeps new classes from pushing old ones."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor

from retain.strategies.base import params
from retain.strategies.contract import LearnerView, Step
from retain.strategies.memory import Memory, MemoryStrategy


@params
class ERACE(MemoryStrategy):
    """ER with Asymmetric Cross-Entropy (Caccia et al. 2022, ICLR, "New Insights on Reducing
    Abrupt Representation Change in Online Continual Learning").

    Incoming samples are scored only among the classes present in their batch, so learning a
    new class does not push down the logits of old ones; replayed samples use the usual
    cross-entropy over all classes: the step's loss is ``ACE(new) + CE(replayed)``, the replayed
    rows riding in the same forward pass as the new ones. The reservoir memory is filled as
    samples stream in (``policy``: a reservoir, or one that evicts from the largest class). With
    ``augment`` replayed samples are augmented (``retain.models.augment``).

    Args:
        memory_size: the most samples the memory keeps.
        batch_size: replayed rows a step; None: as many as the incoming rows.
        augment: replayed inputs are augmented.
        policy: ``"reservoir"``, or ``"balanced_reservoir"`` (it evicts from the largest class).
    """

    memory_size: PositiveInt = 200
    batch_size: PositiveInt | None = None
    augment: bool = False
    policy: Literal["reservoir", "balanced_reservoir"] = "reservoir"

    online = True
    name = "er_ace"
    paper = 'Caccia et al. 2022, "New Insights on Reducing Abrupt Representation Change", ICLR'
    family = "replay"
    distributed = False
    distributed_hint = "its reservoir memory learns from each step's rows, one rank's share"
    scenarios = ("class_incremental", "task_incremental")

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, self.policy)

    def batch(self, learner: LearnerView, step: Step) -> Step:
        # Replayed rows join the incoming ones in the learner's forward pass (one graph a step);
        # the incoming ones are offered to the memory after the replayed ones are drawn.
        step = self.replay(learner, step, self.batch_size or step.incoming)
        self.offer(learner, step)
        return step

    def task_loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        new, y = step.incoming, step.y
        yn, zn = y[:new], logits[:new]
        present = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        present[yn] = True
        loss = F.cross_entropy(zn.masked_fill(~present, torch.finfo(logits.dtype).min), yn)
        if len(y) > new:
            loss = loss + F.cross_entropy(logits[new:], y[new:])
        return loss
