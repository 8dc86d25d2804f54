"""Weight aligning: after each experience, scale the new classes' head weights to the old classes' norm."""

from __future__ import annotations

import torch
from torch import nn

from retain.models import IncrementalHead, LinearHead
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView


def class_rows(head: nn.Module) -> list[tuple[nn.Linear, int]]:
    """The linear layers of a classifier head with the class id of each one's first row."""
    if isinstance(head, LinearHead):
        return [(head.fc, 0)]
    if isinstance(head, IncrementalHead):
        out, first = [], 0
        for block in head.blocks:
            assert isinstance(block, nn.Linear)  # a growing head's blocks are linear layers
            out.append((block, first))
            first += block.out_features
        return out
    raise ValueError(f"weight_aligning needs a linear head (fixed or growing), the model has {type(head).__name__}")


@params
class WeightAligning(Strategy):
    """Logit bias control by weight aligning (Zhao et al. 2020, CVPR, "Maintaining Discrimination and
    Fairness in Class Incremental Learning").

    Trained on few stored samples of the old classes and many of the new, a head's rows for the new
    classes grow longer than the old ones', so new classes win most close calls (the recency bias every
    replay method shows in class-incremental learning). After each experience the rows (weights and
    bias) of the classes it brought are scaled by the mean norm of the old classes' weight rows over the
    mean norm of theirs, which puts them on equal footing (classes it brings back keep theirs); nothing is
    trained. Compose it after a replay
    method (``[derpp, weight_aligning]``): it is the bias-control trick of the rehearsal "bag of tricks"
    (Buzzega et al. 2020), in its closed form.
    """

    name = "weight_aligning"
    paper = 'Zhao et al. 2020, "Maintaining Discrimination and Fairness in Class Incremental Learning", CVPR'
    family = "architecture"  # it rescales the head; nothing is learned or kept
    scenarios = ("class_incremental",)

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        ctx.notes[self.name] = set(learner.seen_classes_)  # a class the experience brings back is not new

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        known = ctx.notes.get(self.name, set())
        new = set(ctx.classes) - known
        old = [c for c in learner.seen_classes_ if c not in new]
        if not old or not new:
            return
        rows = class_rows(learner.model.head)
        norms: dict[int, torch.Tensor] = {}
        for layer, first in rows:
            for k, norm in enumerate(layer.weight.detach().norm(dim=1)):
                norms[first + k] = norm
        old_norm = torch.stack([norms[c] for c in old if c in norms]).mean()
        new_norm = torch.stack([norms[c] for c in new if c in norms]).mean()
        if not torch.isfinite(old_norm / new_norm) or new_norm == 0:
            return
        gamma = old_norm / new_norm
        with torch.no_grad():
            for layer, first in rows:
                mine = [c - first for c in new if first <= c < first + layer.out_features]
                if mine:
                    index = torch.tensor(mine, device=layer.weight.device)
                    layer.weight[index] *= gamma
                    if layer.bias is not None:
                        layer.bias[index] *= gamma
