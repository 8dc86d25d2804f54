"""Synaptic Intelligence: weight importance from each weight's contribution along the path."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import NonNegativeFloat, PositiveFloat

from retain.strategies.base import Strategy, flatten, params, unflatten
from retain.strategies.importance import capped, grown, quadratic_penalty, snapshot


@params
class SI(Strategy):
    """Synaptic Intelligence (Zenke, Poole & Ganguli 2017, ICML).

    During training each weight accumulates ``omega_i = -sum_steps g_i * delta theta_i``, its
    share of the loss decrease (a negative share counts as zero). At the end of an experience its importance grows by
    ``omega_i / ((theta_i - theta_i^start)^2 + xi)`` and training adds
    ``(lam / 2) * sum_i Omega_i (theta_i - theta*_i)^2``, importances capped for SGD stability
    as in :func:`~retain.strategies.importance.capped`. State: one importance and one anchor.
    """

    lam: NonNegativeFloat = 100.0
    xi: PositiveFloat = 1e-3

    name = "si"
    paper = 'Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence", ICML'
    family = "regularization"

    def __post_init__(self) -> None:
        self.importance_: dict[str, torch.Tensor] = {}
        self.anchor_: dict[str, torch.Tensor] = {}
        self._capped: dict[str, torch.Tensor] | None = None
        self._start: dict[str, torch.Tensor] = {}
        self._omega: dict[str, torch.Tensor] = {}
        self._last: tuple[dict, dict] | None = None

    def before_experience(self, learner, exp) -> None:
        self._start = snapshot(learner.model)
        self._omega = {k: torch.zeros_like(v) for k, v in self._start.items()}
        self._last = None

    def loss(self, learner, x, y, t, logits):
        if not self.anchor_:
            return logits.new_zeros(())
        if self._capped is None:
            self._capped = capped(self.importance_, learner.lr, self.lam)
        return 0.5 * self.lam * quadratic_penalty(learner.model, self.anchor_, self._capped)

    def after_backward(self, learner) -> None:
        self._accumulate(learner)
        named = [(k, p) for k, p in learner.model.named_parameters() if p.grad is not None]
        self._last = ({k: p.detach().clone() for k, p in named}, {k: p.grad.detach().clone() for k, p in named})

    def _accumulate(self, learner) -> None:
        """Add the contribution of the optimizer step taken since the last gradient."""
        if self._last is None:
            return
        before, grads = self._last
        for k, p in learner.model.named_parameters():
            if k in grads and k in self._omega:
                self._omega[k] -= grads[k] * (p.detach() - before[k])

    def after_experience(self, learner, exp) -> None:
        self._accumulate(learner)
        end = snapshot(learner.model)
        for k, w in self._omega.items():
            gain = w.clamp(min=0) / ((end[k] - self._start[k]) ** 2 + self.xi)
            self.importance_[k] = gain + grown(self.importance_.get(k), gain)
        self.anchor_, self._capped, self._last = end, None, None

    def state_dict(self) -> dict[str, Any]:
        return flatten("importance", self.importance_) | flatten("anchor", self.anchor_)

    def load_state_dict(self, state, learner) -> None:
        self.importance_ = unflatten("importance", state)
        self.anchor_ = unflatten("anchor", state)
