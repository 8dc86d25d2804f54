"""MIR: replay the memory samples that the coming update would hurt most."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch.func import functional_call

from retain.strategies.base import params
from retain.strategies.memory import Memory, MemoryStrategy


@params
class MIR(MemoryStrategy):
    """Maximally Interfered Retrieval (Aljundi et al. 2019, NeurIPS, "Online Continual Learning
    with Maximally Interfered Retrieval").

    Each step draws ``candidates`` samples from a reservoir memory, takes a virtual SGD step on
    the incoming batch, and replays the ``batch_size`` candidates (as many as the incoming
    batch when unset) whose loss that step raises most. Incoming batches enter the memory as
    they arrive, so it works task-free through ``partial_fit``.
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

    def interference(self, learner, x, y, t, cx, cy, ct) -> torch.Tensor:
        """How much a virtual SGD step on ``(x, y)`` raises each candidate's loss."""
        model = learner.model
        named = {k: p for k, p in model.named_parameters() if p.requires_grad}
        grads = torch.autograd.grad(F.cross_entropy(model(x, t), y), list(named.values()), allow_unused=True)
        virtual = {k: p - learner.lr * g if g is not None else p
                   for (k, p), g in zip(named.items(), grads, strict=True)}
        with torch.no_grad():
            before = F.cross_entropy(model(cx, ct), cy, reduction="none")
            after = F.cross_entropy(functional_call(model, virtual, (cx, ct)), cy, reduction="none")
        return after - before

    def batch(self, learner, step):
        if len(self.memory_):
            x, y, t = step.new()
            m = self.memory_.sample(self.candidates, learner.generator)
            cx, cy, ct = (m[k].to(x.device) for k in ("x", "y", "t"))
            rise = self.interference(learner, x, y, t, cx, cy, ct)
            top = rise.topk(min(self.batch_size or len(y), len(rise))).indices
            step.append(cx[top], cy[top], ct[top])
        self.offer(learner, step)
        return step
