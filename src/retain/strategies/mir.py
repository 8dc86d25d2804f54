"""MIR: replay the memory samples that the coming update would hurt most."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import Tensor
from torch.func import functional_call

from retain.strategies.base import params
from retain.strategies.contract import LearnerView, Step
from retain.strategies.memory import Memory, MemoryStrategy


@params
class MIR(MemoryStrategy):
    """Maximally Interfered Retrieval (Aljundi et al. 2019, NeurIPS, "Online Continual Learning
    with Maximally Interfered Retrieval").

    Each step draws ``candidates`` samples from a reservoir memory, takes a virtual SGD step on
    the incoming batch, and replays the ``batch_size`` candidates (as many as the incoming
    batch when unset) whose loss that step raises most. Incoming batches enter the memory as
    they arrive, so it works task-free through ``partial_fit``.

    Args:
        memory_size: the most samples the memory keeps.
        candidates: memory samples scored each step.
        batch_size: candidates replayed each step; None: as many as the incoming rows.
    """

    memory_size: PositiveInt = 500
    candidates: PositiveInt = 50
    batch_size: PositiveInt | None = None

    online = True
    name = "mir"
    paper = 'Aljundi et al. 2019, "Online Continual Learning with Maximally Interfered Retrieval", NeurIPS'
    family = "replay"
    distributed = False
    distributed_hint = "its hooks take gradient passes of their own, which DistributedDataParallel does not average"

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "reservoir")

    def interference(self, learner: LearnerView, x: Tensor, y: Tensor, t: Tensor, cx: Tensor, cy: Tensor,
                     ct: Tensor) -> Tensor:
        """How much a virtual SGD step on ``(x, y)`` raises each candidate's loss.

        Args:
            learner: what the strategy may read of the learner (its model and learning rate).
            x: the incoming batch's inputs.
            y: their labels.
            t: their task ids.
            cx: the candidates' inputs, drawn from the memory.
            cy: their labels.
            ct: their task ids.

        Returns:
            Each candidate's loss after the virtual step minus its loss before.
        """
        model = learner.model
        named = {k: p for k, p in model.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(F.cross_entropy(model(x, t), y), list(named.values()), allow_unused=True)
        virtual = {k: p - learner.lr * g if g is not None else p
                   for (k, p), g in zip(named.items(), grads, strict=True)}
        with torch.no_grad():
            before = F.cross_entropy(model(cx, ct), cy, reduction="none")
            after = F.cross_entropy(functional_call(model, virtual, (cx, ct)), cy, reduction="none")
        return after - before

    def batch(self, learner: LearnerView, step: Step) -> Step:
        if len(self.memory_):
            x, y, t = step.new()
            m = self.memory_.sample(self.candidates, learner.generator)
            cx, cy, ct = (m[k].to(x.device) for k in ("x", "y", "t"))
            rise = self.interference(learner, x, y, t, cx, cy, ct)
            top = rise.topk(min(self.batch_size or len(y), len(rise))).indices
            step.append(cx[top], cy[top], ct[top])
        self.offer(learner, step)
        return step
