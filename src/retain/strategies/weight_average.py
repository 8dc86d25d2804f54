"""Weight averaging: after each experience, move the adapted weights back towards the old model's."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from retain.strategies.base import Strategy, flatten, params, unflatten
from retain.strategies.contract import ExperienceContext, LearnerView
from retain.strategies.importance import snapshot


@params
class WeightAverage(Strategy):
    """Weight averaging (Vander Eeckt & Van hamme 2023, "Weight averaging: a simple yet effective
    method to overcome catastrophic forgetting in automatic speech recognition", ICASSP): train on
    the new experience as fine-tuning does, then set every trainable weight to
    ``w * old + (1 - w) * adapted``, ``old`` being its value at the end of the previous experience.
    No data is kept, and nothing is added to a training step. It suits streams whose outputs stay
    the same (new speakers, new words, permuted inputs); in a class-incremental stream with one
    head the average does not undo the head's bias towards the newest classes.

    ``weight`` is the old model's share. Unset (``None``), it follows the number of experiences the
    old model has learned, ``n / (n + 1)``, so that every experience weighs alike in the average
    (the plain mean, 1/2, after the second); a number fixes it. The first experience is kept
    whole, since the untrained model knows nothing; ``pretrained=True`` says the initial model
    knows something worth keeping (a pretrained speech recogniser) and counts it as one
    experience, so the first is averaged with it too.

    A weight that grew since (a head with new classes) is averaged on its old slice, and a new
    parameter is not averaged: the old model had no value for them. The old model is kept from
    the end of the previous experience rather than taken at the start of the next, so a head
    grown in between, or online steps taken in between, count as adaptation. Only trainable
    weights are averaged (the learner re-estimates BatchNorm statistics); on LoRA adapters each
    factor is averaged, which is not the average of their product.

    Args:
        weight: the old model's share, 0-1; None: ``n / (n + 1)`` with ``n`` experiences learned.
        pretrained: count the initial model as one experience.
    """

    weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    pretrained: bool = False

    name = "weight_average"
    generative = True
    paper = ('Vander Eeckt & Van hamme 2023, "Weight averaging: a simple yet effective method to overcome '
             'catastrophic forgetting in automatic speech recognition", ICASSP')
    family = "regularization"
    tunable = {"weight": {"low": 0.1, "high": 0.9}}

    def __post_init__(self) -> None:
        self.old_: dict[str, torch.Tensor] = {}
        self.learned_ = 0  # experiences the old model holds (the initial model counting one when pretrained)

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        if self.pretrained and not self.old_:
            self.old_, self.learned_ = snapshot(learner.model), 1

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        if self.old_:
            share = self.weight if self.weight is not None else self.learned_ / (self.learned_ + 1)
            current = dict(learner.model.named_parameters())
            with torch.no_grad():
                for name, old in self.old_.items():
                    if name in current:  # a parameter replaced since (a head taken over) has no old value
                        current[name][tuple(slice(0, n) for n in old.shape)].lerp_(old, share)
        self.old_ = snapshot(learner.model)
        self.learned_ += 1

    def state_dict(self) -> dict[str, Any]:
        return flatten("old", self.old_) | {"learned": self.learned_}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.old_ = unflatten("old", state)
        self.learned_ = int(state.get("learned", 0))
