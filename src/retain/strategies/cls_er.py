"""CLS-ER: experience replay with a fast and a slow moving average of the model as teachers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import Tensor
from torch.func import functional_call

from retain.strategies.base import flatten, params, unflatten
from retain.strategies.contract import ExperienceContext, LearnerView, Step
from retain.strategies.importance import snapshot
from retain.strategies.memory import Memory, MemoryStrategy

Rate = Annotated[float, Field(gt=0.0, le=1.0)]
Decay = Annotated[float, Field(ge=0.0, lt=1.0)]


def _fitted(kept: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """``kept`` weights shaped as ``model``'s now: a weight that grew since (a head with new classes) takes
    the model's value where ``kept`` has none."""
    current = dict(model.named_parameters())
    out = {}
    for name, old in kept.items():
        now = current.get(name)
        if now is None:
            continue
        if now.shape != old.shape:
            grown = now.detach().clone()
            grown[tuple(slice(0, n) for n in old.shape)] = old
            old = grown
        out[name] = old
    return out


def _load(model: torch.nn.Module, weights: dict[str, Tensor]) -> None:
    """Copy ``weights`` into ``model`` (on the slice they cover when a weight grew since)."""
    current = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in weights.items():
            if name in current:
                current[name][tuple(slice(0, n) for n in w.shape)].copy_(w)


@params
class CLSER(MemoryStrategy):
    """CLS-ER, complementary learning system experience replay (Arani, Sarfraz & Zonooz 2022, ICLR).

    Beside the model being trained (the working model) two exponential moving averages of its weights are
    kept: a plastic one, updated after a share ``plastic_rate`` of the steps with decay ``plastic_decay``,
    and a stable one, updated less often (``stable_rate``) or more slowly (``stable_decay``); early on the
    decay is capped at ``1 - 1/(steps + 1)``, so the averages start as the model. Each step replays a
    reservoir memory batch (``ratio`` times the incoming rows, or ``batch_size``) under the cross-entropy with
    the new rows, and pulls the working model's logits on it towards a teacher's by a mean squared error
    weighed ``reg_weight``: per row, the teacher (plastic or stable) that gives the row's true class the
    higher probability (with ``augment``, on an augmented view of the memory batch: ``retain.models.augment``).
    The memory is a reservoir (``policy``; or the class-balanced or loss-aware reservoir of ``Memory``).
    Between experiences the model holds the stable weights, which answer predictions
    (the paper's inference model); training goes on from the working weights. The defaults are the
    authors' for Seq-MNIST at memory 200 with batch 10 (``reg_weight`` 2, rates 1 and 0.9, decays 0.99);
    their Seq-CIFAR-10 settings are ``reg_weight`` 0.15, rates 0.9 and 0.8, decay 0.999. A decay ``d`` averages
    over about ``1 / (1 - d)`` steps: with experiences of tens of steps rather than a thousand, faster decays
    (0.9 and 0.95 on the tests' digits, 40 steps an experience) keep the stable teacher from lagging behind
    the classes the experience brought (there, 0.99 scores 42% against replay's 91%).

    Args:
        memory_size: the most samples the memory keeps.
        batch_size: memory rows a step; None: ``ratio`` times the incoming rows.
        ratio: memory rows per incoming row when ``batch_size`` is unset.
        reg_weight: the weight of the mean squared error to the teacher's logits.
        plastic_rate: the share of optimizer steps after which the plastic average moves, 0-1.
        plastic_decay: the plastic average's decay, 0-1.
        stable_rate: the share of optimizer steps after which the stable average moves, 0-1.
        stable_decay: the stable average's decay, 0-1.
        augment: replay an augmented view of the memory batch.
        policy: the memory's policy: ``"reservoir"``, ``"balanced_reservoir"`` or ``"loss_aware"``.
    """

    memory_size: PositiveInt = 200
    batch_size: PositiveInt | None = None
    ratio: PositiveFloat = 1.0
    reg_weight: NonNegativeFloat = 2.0
    plastic_rate: Rate = 1.0
    plastic_decay: Decay = 0.99
    stable_rate: Rate = 0.9
    stable_decay: Decay = 0.99
    augment: bool = False
    policy: Literal["reservoir", "balanced_reservoir", "loss_aware"] = "reservoir"

    name = "cls_er"
    paper = ('Arani, Sarfraz & Zonooz 2022, "Learning Fast, Learning Slow: A General Continual Learning Method '
             'based on Complementary Learning System", ICLR')
    family = "replay"
    tunable = {"reg_weight": {"low": 0.05, "high": 4.0, "log": True},
               "stable_rate": {"low": 0.05, "high": 1.0}}
    online_hint = "its teachers move after each optimizer step and its answers are the stable teacher's; run it offline"
    distributed_hint = "its reservoir memory learns from each step's rows, one rank's share"

    def __post_init__(self) -> None:
        self.memory_ = Memory(self.memory_size, self.policy)
        self.plastic_: dict[str, Tensor] = {}
        self.stable_: dict[str, Tensor] = {}
        self.working_: dict[str, Tensor] = {}  # the working weights, kept aside while the model holds the stable ones
        self.steps_ = 0
        self.stepped_ = False  # an optimizer step was taken since the teachers last moved

    def supports_online(self) -> bool:
        return False

    def supports_distributed(self) -> bool:
        return False

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        if self.working_:
            _load(learner.model, self.working_)
            self.working_ = {}
        if not self.plastic_:
            self.plastic_, self.stable_ = snapshot(learner.model), snapshot(learner.model)

    def _follow(self, learner: LearnerView) -> None:
        """Move the teachers towards the model after an optimizer step (each with its own chance)."""
        if not self.stepped_:
            return
        self.stepped_ = False
        self.steps_ += 1
        current = dict(learner.model.named_parameters())
        for teacher, rate, decay in ((self.plastic_, self.plastic_rate, self.plastic_decay),
                                     (self.stable_, self.stable_rate, self.stable_decay)):
            if float(torch.rand(1, generator=learner.generator)) >= rate:
                continue
            keep = min(1 - 1 / (self.steps_ + 1), decay)
            with torch.no_grad():
                for name, w in _fitted(teacher, learner.model).items():
                    teacher[name] = w.mul_(keep).add_(current[name].detach(), alpha=1 - keep)

    def batch(self, learner: LearnerView, step: Step) -> Step:
        self._follow(learner)
        if not len(self.memory_):
            return step
        n = self.batch_size or max(1, round(self.ratio * step.incoming))
        m = self.draw(learner, step, n)
        x, y, t = m["x"].to(step.x.device), m["y"].to(step.x.device), m["t"].to(step.x.device)
        with torch.no_grad():
            plastic, stable = (functional_call(learner.model, _fitted(w, learner.model), (x, t), strict=False)
                               for w in (self.plastic_, self.stable_))
            rows = torch.arange(len(y), device=y.device)
            surer = F.softmax(stable, 1)[rows, y] > F.softmax(plastic, 1)[rows, y]
            step.notes["cls_er"] = torch.where(surer[:, None], stable, plastic)
        step.append(x, y, t)
        return step

    def loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        self.offer(learner, step, logits)
        target = step.notes.get("cls_er")
        if target is None:
            return logits.new_zeros(())
        new = step.incoming
        return self.reg_weight * F.mse_loss(logits[new:new + len(target)], target)

    def after_backward(self, learner: LearnerView, step: Step) -> None:
        self.stepped_ = True

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        self._follow(learner)
        self.working_ = snapshot(learner.model)
        _load(learner.model, _fitted(self.stable_, learner.model))

    def state_dict(self) -> dict[str, Any]:
        return (super().state_dict() | flatten("plastic", self.plastic_) | flatten("stable", self.stable_)
                | flatten("working", self.working_)
                | {"steps": torch.tensor(self.steps_), "stepped": torch.tensor(self.stepped_)})

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        super().load_state_dict({k: v for k, v in state.items() if not k.startswith(("plastic.", "stable.",
                                                                                      "working."))}, learner)
        self.plastic_, self.stable_ = unflatten("plastic", state), unflatten("stable", state)
        self.working_ = unflatten("working", state)
        self.steps_ = int(state.get("steps", 0))
        self.stepped_ = bool(state.get("stepped", False))
