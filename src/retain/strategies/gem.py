"""GEM: project each step so that no earlier experience's memory loss increases."""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveInt

from retain.strategies.base import params
from retain.strategies.memory import Memory, MemoryStrategy
from retain.strategies.projection import GroupGrads, flat_grad, project_to_cone, set_flat_grad


@params
class GEM(MemoryStrategy):
    """Gradient Episodic Memory (Lopez-Paz & Ranzato 2017, NeurIPS).

    The memory keeps an equal share of samples from every experience. Each step computes the
    gradient of the loss on each earlier experience's samples; if the new gradient conflicts
    with any of them, it is replaced by the closest gradient that conflicts with none (the
    quadratic program is solved exactly, see :func:`~retain.strategies.projection.project_to_cone`).
    ``margin`` (the paper's memory strength) biases the solution further towards old experiences.
    ``per_experience`` caps each experience's share (the paper's and Avalanche's fixed number of
    patterns per task): cheaper steps early in a stream, at some accuracy (Split MNIST-5k with
    40: see ``benchmarks/PEER_AVALANCHE.md``).
    """

    memory_size: PositiveInt = 200
    margin: NonNegativeFloat = 0.5
    per_experience: PositiveInt | None = None

    name = "gem"
    paper = 'Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory", NeurIPS'
    family = "gradient_projection"

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, "class_balanced", balance="e", cap=self.per_experience)
        self._groups: tuple[tuple[torch.Tensor, ...], list[int]] | None = None
        self._grads = GroupGrads()

    def after_backward(self, learner) -> None:
        if not len(self.memory_):
            return
        if self._groups is None:  # the memory changes only between experiences: sorted by experience once
            e = self.memory_.e
            order = torch.argsort(e, stable=True)
            rows = tuple(v[order].to(learner.device) for v in (self.memory_.x, self.memory_.y, self.memory_.t))
            self._groups = rows, torch.bincount(e)[e.unique()].tolist()
        g = flat_grad(learner.model)
        G = self._grads(learner, *self._groups[0], self._groups[1])
        if (G @ g < 0).any():
            set_flat_grad(learner.model, project_to_cone(g, G, self.margin))

    def after_experience(self, learner, exp) -> None:
        self.memory_.add(exp.x_train, exp.y_train, exp.train_tasks(), exp.id, generator=learner.generator)
        self._groups = None

    def load_state_dict(self, state, learner) -> None:
        super().load_state_dict(state, learner)
        self._groups = None
