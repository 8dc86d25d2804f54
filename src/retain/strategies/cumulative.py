"""Cumulative: retrain on every experience seen so far (an upper bound that keeps all data)."""

from __future__ import annotations

from typing import Any

import torch

from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView


@params
class Cumulative(Strategy):
    """At each experience, train on the union of all experiences seen so far.

    The incremental upper bound used by Lomonaco & Maltoni (2017, CORe50) and Avalanche: it
    keeps everything, so its memory and training time grow with the stream.
    """

    name = "cumulative"
    paper = 'Lomonaco & Maltoni 2017, "CORe50" (cumulative upper bound)'
    replaces_train_set = True
    grows = "it keeps every training sample seen"

    def __post_init__(self) -> None:
        self.x_: list[torch.Tensor] = []
        self.y_: list[torch.Tensor] = []
        self.t_: list[torch.Tensor] = []

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        x, y, t = ctx.train_set
        self.x_.append(x)
        self.y_.append(y)
        self.t_.append(t)
        ctx.replace_train_set(torch.cat(self.x_), torch.cat(self.y_), torch.cat(self.t_))

    def state_dict(self) -> dict[str, Any]:
        if not self.y_:
            return {}
        x, y, t = (torch.cat(a) for a in (self.x_, self.y_, self.t_))
        return {"x": x, "y": y, "t": t}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        if state:
            rows = {k: len(state[k]) for k in ("x", "y", "t")}
            if len(set(rows.values())) > 1:
                raise ValueError("its samples disagree on the row count (" +
                                 ", ".join(f"{k} {n}" for k, n in rows.items()) + ")")
            self.x_, self.y_, self.t_ = [state["x"].cpu()], [state["y"].cpu()], [state["t"].cpu()]
        else:
            self.x_, self.y_, self.t_ = [], [], []
