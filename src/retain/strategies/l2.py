"""L2 regularization: keep the weights near those learned on the previous experiences."""

from __future__ import annotations

from typing import Any

from pydantic import NonNegativeFloat
from torch import Tensor

from retain.strategies.base import Strategy, flatten, params, unflatten
from retain.strategies.contract import ExperienceContext, LearnerView, Step
from retain.strategies.importance import add_penalty_grad, snapshot


@params
class L2(Strategy):
    """Isotropic weight anchoring: adds ``(lam / 2) * sum_i (theta_i - theta*_i)^2``, with
    ``theta*`` the weights at the end of the previous experience.

    EWC with every importance equal to one; the "L2" baseline of Kirkpatrick et al. 2017
    ("Overcoming catastrophic forgetting in neural networks", Fig. 2).

    Args:
        lam: the penalty's strength.
    """

    lam: NonNegativeFloat = 0.1

    name = "l2"
    generative = True
    paper = 'Kirkpatrick et al. 2017, PNAS (the L2 baseline)'
    family = "regularization"
    tunable = {"lam": {"low": 0.001, "high": 10.0, "log": True}}

    def __post_init__(self) -> None:
        self.anchor_: dict[str, Tensor] = {}

    def after_backward(self, learner: LearnerView, step: Step) -> None:
        if self.anchor_:
            add_penalty_grad(learner.model, self.anchor_, float(self.lam))

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        self.anchor_ = snapshot(learner.model)

    def state_dict(self) -> dict[str, Any]:
        return flatten("anchor", self.anchor_)

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.anchor_ = unflatten("anchor", state)
