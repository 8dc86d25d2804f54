"""GDumb: keep a class-balanced memory and retrain from scratch on it alone."""

from __future__ import annotations

from pydantic import PositiveInt

from retain.strategies.base import params
from retain.strategies.contract import ExperienceContext, LearnerView
from retain.strategies.memory import Memory, MemoryStrategy


@params
class GDumb(MemoryStrategy):
    """GDumb (Prabhu, Torr & Dokania 2020, ECCV, "GDumb: A Simple Approach that Questions Our
    Progress in Continual Learning").

    A greedy class-balanced sampler puts the new experience into the memory; the model is then
    re-initialised and trained on the memory only. A baseline that any method using a memory
    of the same size should beat.

    Args:
        memory_size: the most samples the memory keeps (all the model trains on).
    """

    memory_size: PositiveInt = 200

    name = "gdumb"
    paper = 'Prabhu, Torr & Dokania 2020, "GDumb", ECCV'
    family = "replay"
    replaces_train_set = True

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "class_balanced")

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        self.memory_.add(*ctx.train_set, ctx.id, generator=learner.generator)
        with learner.seeded():
            for module in learner.model.modules():
                reset = getattr(module, "reset_parameters", None)
                if reset is not None:
                    reset()
        ctx.replace_train_set(self.memory_.x, self.memory_.y, self.memory_.t)
