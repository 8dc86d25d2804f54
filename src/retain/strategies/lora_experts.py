"""Per-experience LoRA adapters on a frozen text encoder, routed by class prototypes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retain.models import MultiHead
from retain.models.pretrained import TextEncoder
from retain.strategies.base import Strategy, head_width, params
from retain.strategies.contract import ExperienceContext, LearnerView, Step

if TYPE_CHECKING:
    from retain.data import Experience


@params
class LoRAExperts(Strategy):
    """One LoRA adapter and one head per experience over a frozen pretrained encoder.

    Parameter-efficient dynamic architecture in the spirit of progressive networks (Rusu et al.
    2016) with low-rank adapters (Hu et al. 2022): experience ``k`` trains only its own adapter
    and head, so nothing learned before can be overwritten. After training, the adapter's
    normalised class means of its training features are kept as prototypes.

    Choosing the adapter at prediction: with task ids (task-incremental streams) the task's
    adapter is used. Without them (class-incremental streams) every adapter embeds the input
    and the adapter whose nearest prototype is most similar (cosine) wins; its head then
    scores the sample. Prediction therefore costs one encoder pass per experience seen.
    Needs ``model.backbone`` a text encoder with ``adaptation: lora``; the per-experience state
    is one adapter (``2 r (d_in + d_out)`` per adapted layer), one head and its prototypes.
    """

    name = "lora_experts"
    paper = 'Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"; Rusu et al. 2016'
    family = "architecture"
    distributed = False
    distributed_hint = "each step trains one direction's adapters, not verified across ranks"
    scenarios = ("class_incremental", "task_incremental")
    needs = ("lora_text",)

    def __post_init__(self) -> None:
        self.current_ = 0

    def _backbone(self, learner: LearnerView) -> TextEncoder:
        backbone = learner.model.backbone
        if not isinstance(backbone, TextEncoder) or backbone.adaptation != "lora":
            raise ValueError("lora_experts needs a text backbone with adaptation: lora "
                             "(model: {backbone: minilm, adaptation: lora})")
        return backbone

    def _expert(self, exp: Experience) -> int:
        return exp.task if exp.scenario == "task_incremental" else exp.id

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        exp = ctx.experience
        backbone, model = self._backbone(learner), learner.model
        self.current_ = self._expert(exp)
        with learner.seeded():
            backbone.add_expert(self.current_, list(exp.classes))
            if not isinstance(model.head, MultiHead):
                model.head = MultiHead(head_width(model.head), 0).to(learner.device)
            model.head.add_task(self.current_, list(exp.classes))
        backbone.task_free = exp.scenario == "class_incremental"
        backbone.use_expert(self.current_)

    def batch(self, learner: LearnerView, step: Step) -> Step:
        step.t = torch.full_like(step.t, self.current_)
        return step

    @torch.no_grad()
    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        exp = ctx.experience
        backbone, k = self._backbone(learner), self.current_
        feats = learner.features(exp.x_train, torch.full((exp.n_train,), k), batch_size=64)
        protos: Tensor = getattr(backbone, f"prototypes_{k}")
        for i, c in enumerate(backbone.experts[k]):
            if (exp.y_train == c).any():
                protos[i] = F.normalize(feats[exp.y_train == c].mean(0), dim=0).to(protos)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current_}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        self.current_ = int(state.get("current", 0))
