"""Memory Aware Synapses: weight importance from the sensitivity of the outputs, no labels."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field, NonNegativeFloat

from retain.strategies.base import Strategy, flatten, params, unflatten
from retain.strategies.importance import capped, grown, importance, quadratic_penalty, snapshot


@params
class MAS(Strategy):
    """Memory Aware Synapses (Aljundi et al. 2018, ECCV).

    After each experience, a weight's importance is the mean over its training samples of the
    absolute gradient of the squared L2 norm of the model's outputs (labels are not needed);
    importances accumulate as ``Omega <- decay * Omega + Omega_new`` and training adds
    ``(lam / 2) * sum_i Omega_i (theta_i - theta*_i)^2`` around the latest weights, capped for
    SGD stability as in :func:`~retain.strategies.importance.capped`.
    """

    lam: NonNegativeFloat = 1.0
    decay: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0

    name = "mas"
    paper = 'Aljundi et al. 2018, "Memory Aware Synapses", ECCV'
    family = "regularization"

    def __post_init__(self) -> None:
        self.importance_: dict[str, torch.Tensor] = {}
        self.anchor_: dict[str, torch.Tensor] = {}
        self._capped: dict[str, torch.Tensor] | None = None

    def loss(self, learner, x, y, t, logits):
        if not self.anchor_:
            return logits.new_zeros(())
        if self._capped is None:
            self._capped = capped(self.importance_, learner.lr, self.lam)
        return 0.5 * self.lam * quadratic_penalty(learner.model, self.anchor_, self._capped)

    def after_experience(self, learner, exp) -> None:
        new = importance(learner, exp.x_train, exp.y_train, exp.train_tasks(), "mas")
        self.importance_ = {k: v + self.decay * grown(self.importance_.get(k), v) for k, v in new.items()}
        self.anchor_, self._capped = snapshot(learner.model), None

    def state_dict(self) -> dict[str, Any]:
        return flatten("importance", self.importance_) | flatten("anchor", self.anchor_)

    def load_state_dict(self, state, learner) -> None:
        self.importance_ = unflatten("importance", state)
        self.anchor_ = unflatten("anchor", state)
