"""A-GEM: never let a step increase the loss on a sample of the memory."""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from retain.strategies.base import params
from retain.strategies.contract import ExperienceContext, LearnerView, Step
from retain.strategies.memory import Memory, MemoryStrategy
from retain.strategies.projection import dot, grads, memory_grads


@params
class AGEM(MemoryStrategy):
    """Averaged Gradient Episodic Memory (Chaudhry et al. 2019, ICLR).

    Each step computes the reference gradient ``g_ref`` of the loss on ``sample_size`` memory
    samples; when the new gradient ``g`` points against it (``g . g_ref < 0``), ``g`` is
    projected to ``g - (g . g_ref / g_ref . g_ref) g_ref``, so the memory loss does not rise to
    first order. The memory is class-balanced and filled after each experience, or with
    ``update="stream"`` (online A-GEM) with each incoming batch once its step is projected.

    Args:
        memory_size: the most samples the memory keeps.
        sample_size: memory samples per reference gradient ``g_ref``.
        update: ``"experience"``: the memory takes each experience's samples after it; ``"stream"``: each
            incoming batch, once its step is projected (online A-GEM).
    """

    memory_size: PositiveInt = 200
    sample_size: PositiveInt = 64
    update: Literal["experience", "stream"] = "experience"

    name = "agem"
    paper = 'Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM", ICLR'
    family = "gradient_projection"
    distributed = False
    distributed_hint = "its hooks take gradient passes of their own, which DistributedDataParallel does not average"

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "class_balanced")

    def supports_online(self) -> bool:
        return self.update == "stream"

    def after_backward(self, learner: LearnerView, step: Step) -> None:
        if self.update == "stream":  # the incoming rows join the memory once their step is projected
            self.offer(learner, step)
        if not len(self.memory_):
            return
        g = grads(learner)
        m = self.memory_.sample(self.sample_size, learner.generator, ("x", "y", "t"))
        g_ref = memory_grads(learner, m["x"], m["y"], m["t"])
        conflict = float(dot(g, g_ref))
        if conflict < 0:  # edit the gradients in place: g -= (g . g_ref / g_ref . g_ref) g_ref
            scale = conflict / max(float(dot(g_ref, g_ref)), 1e-12)
            for gi, ri in zip(g, g_ref, strict=True):
                gi.sub_(ri, alpha=scale)

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        if self.update == "stream":
            return
        exp = ctx.experience
        self.memory_.add(exp.x_train, exp.y_train, exp.train_tasks(), exp.id, generator=learner.generator)
