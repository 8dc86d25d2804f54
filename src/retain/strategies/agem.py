"""A-GEM: never let a step increase the loss on a sample of the memory."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import PositiveInt

from retain.strategies.base import params
from retain.strategies.memory import Memory, MemoryStrategy
from retain.strategies.projection import flat_grad, memory_grad, set_flat_grad


@params
class AGEM(MemoryStrategy):
    """Averaged Gradient Episodic Memory (Chaudhry et al. 2019, ICLR).

    Each step computes the reference gradient ``g_ref`` of the loss on ``sample_size`` memory
    samples; when the new gradient ``g`` points against it (``g . g_ref < 0``), ``g`` is
    projected to ``g - (g . g_ref / g_ref . g_ref) g_ref``, so the memory loss does not rise to
    first order. The memory is class-balanced and filled after each experience, or with
    ``update="stream"`` (online A-GEM) with each incoming batch once its step is projected.
    """

    memory_size: PositiveInt = 200
    sample_size: PositiveInt = 64
    update: Literal["experience", "stream"] = "experience"

    name = "agem"
    paper = 'Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM", ICLR'
    family = "gradient_projection"

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "class_balanced")

    def supports_online(self) -> bool:
        return self.update == "stream"

    def batch(self, learner, x, y, t):
        self._incoming = (x, y, t)  # offered to a stream memory once its step is projected
        return x, y, t

    def after_backward(self, learner) -> None:
        if self.update == "stream":
            self.offer(learner, *self._incoming)
        if not len(self.memory_):
            return
        g = flat_grad(learner.model)
        m = self.memory_.sample(self.sample_size, learner.generator)
        g_ref = memory_grad(learner, m["x"], m["y"], m["t"])
        dot = torch.dot(g, g_ref)
        if dot < 0:
            g = g - dot / torch.dot(g_ref, g_ref).clamp_min(1e-12) * g_ref
        set_flat_grad(learner.model, g)

    def after_experience(self, learner, exp) -> None:
        if self.update == "stream":
            return
        self.memory_.add(exp.x_train, exp.y_train, exp.train_tasks(), exp.id, generator=learner.generator)
