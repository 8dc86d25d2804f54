"""Dynamic architecture: one classifier head per task (task-incremental learning)."""

from __future__ import annotations

import torch

from retain.models import MultiHead
from retain.strategies.base import Strategy, head_width, params
from retain.strategies.contract import ExperienceContext, LearnerView


@params
class TaskHeads(Strategy):
    """A new linear head for each new task over a shared backbone ("multi-headed" setup of
    Li & Hoiem 2017 and the task-incremental protocol of van de Ven & Tolias 2019). At
    prediction each sample is scored by the head of its task, so tasks cannot interfere in
    the output layer. Needs task ids at test time. Put it first in a strategy list.
    """

    name = "task_heads"
    paper = 'Li & Hoiem 2017; van de Ven & Tolias 2019 (multi-headed setup)'
    family = "architecture"
    # Each task's classes get their own head once: a class-incremental stream (one task id, new
    # classes every experience) would find task 0's head already built for its first classes.
    scenarios = ("task_incremental",)

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        model = learner.model
        with learner.seeded():
            if not isinstance(model.head, MultiHead):
                model.head = MultiHead(head_width(model.head), 0).to(learner.device)
            _, y, t = ctx.train_set  # a merged stream (Joint) holds several tasks at once
            for task in torch.unique(t).tolist():
                model.head.add_task(task, torch.unique(y[t == task]).tolist())
