"""Memory Aware Synapses: weight importance from the sensitivity of the outputs, no labels."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, NonNegativeFloat

from retain.strategies.base import params
from retain.strategies.contract import ExperienceContext, LearnerView
from retain.strategies.importance import AnchoredPenalty, grown, importance


@params
class MAS(AnchoredPenalty):
    """Memory Aware Synapses (Aljundi et al. 2018, ECCV).

    After each experience, a weight's importance is the mean over its training samples of the
    absolute gradient of the squared L2 norm of the model's outputs (labels are not needed);
    importances accumulate as ``Omega <- decay * Omega + Omega_new`` and training adds
    ``(lam / 2) * sum_i Omega_i (theta_i - theta*_i)^2`` around the latest weights, capped for
    SGD stability as in :func:`~retain.strategies.importance.capped`. Default ``lam`` 0.3: on
    Split MNIST-5k, 29% class-incremental and 96% task-incremental (1.0: 17% and 97%).

    Args:
        lam: the penalty's strength.
        decay: the old importances' weight when new ones are added, 0-1.
    """

    lam: NonNegativeFloat = 0.3
    decay: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0

    name = "mas"
    paper = 'Aljundi et al. 2018, "Memory Aware Synapses", ECCV'
    family = "regularization"
    tunable = {"lam": {"low": 0.003, "high": 30.0, "log": True}}

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        exp = ctx.experience
        new = importance(learner, exp.x_train, exp.y_train, exp.train_tasks(), "mas")
        old = getattr(self, "importance_", {})
        self.set_anchor(learner, {k: v + self.decay * grown(old.get(k), v) for k, v in new.items()})
