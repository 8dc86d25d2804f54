"""Progressive neural networks: a new frozen-safe column of layers for every task."""

from __future__ import annotations

from retain.models import MultiHead, ProgressiveMLP
from retain.strategies.base import Strategy, params
from retain.strategies.contract import ExperienceContext, LearnerView


@params
class PNN(Strategy):
    """Progressive Neural Networks (Rusu et al. 2016, arXiv:1606.04671).

    Each new task adds a column of MLP layers (:class:`~retain.models.ProgressiveMLP`) with
    lateral connections from every earlier column, and its own head; earlier columns are
    frozen, so old tasks cannot be forgotten, at the price of one column (plus laterals) per
    task. Replaces the model's backbone with columns of the same widths at the first task.
    Task-incremental only: prediction needs the task id to pick the column.
    """

    name = "pnn"
    paper = 'Rusu et al. 2016, "Progressive Neural Networks", arXiv:1606.04671'
    family = "architecture"
    distributed = False
    distributed_hint = "its columns grow and freeze per task, not verified across ranks"
    scenarios = ("task_incremental",)
    needs = ("mlp",)

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        model, exp = learner.model, ctx.experience
        with learner.seeded():
            if not isinstance(model.backbone, ProgressiveMLP):
                cfg = model.get_config()["backbone"]
                if cfg.get("name") != "mlp":
                    raise ValueError(f"pnn builds MLP columns; the model's backbone is {cfg.get('name')!r}")
                model.backbone = ProgressiveMLP(cfg["in_features"], cfg["hidden"]).to(learner.device)
                model.head = MultiHead(model.backbone.out_features, 0).to(learner.device)
            model.backbone.add_column(exp.task)
            assert isinstance(model.head, MultiHead)  # set with the first column
            model.head.add_task(exp.task, exp.classes)
            for task, head in model.head.heads.items():
                head.requires_grad_(task == str(exp.task))
