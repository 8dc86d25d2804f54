"""The base class of every strategy: hyper-parameters as a validated dataclass, hooks that do nothing.

The hooks, their order and what they receive are the contract of ``retain.strategies.contract``.
``task_loss`` lets a strategy replace the cross-entropy over every row that ``loss`` terms are
added to (replay that weighs replayed rows, ER-ACE's asymmetric loss, DER's cross-entropy over new
rows only; without it such a method had to add the cross-entropy it wanted and subtract the
learner's, computing the loss three times a step); at most one strategy of a composition may.
What the learner, the config and the conformance suite rely on is declared, not discovered:
``scenarios``, ``online`` (or ``supports_online()``), ``closed_form`` (it writes the model at
experience ends, so no gradient steps are taken), ``replaces_train_set``, ``needs`` (of the
model), ``grows`` (why its state may grow with the stream) and ``memory()`` (its replay memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import Tensor

from retain.strategies.contract import HOOKS, SCENARIO_KINDS, ExperienceContext, LearnerView, Step

if TYPE_CHECKING:
    from retain.strategies.memory import Memory

# Strategy parameters are validated on construction: a wrong type, an unknown name or an
# impossible value raises pydantic's ValidationError naming the field.
params = dataclass(config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))

FAMILIES = ("baseline", "replay", "regularization", "gradient_projection", "prototype", "architecture")


class Strategy:
    """Base class: every hook is optional and does nothing by default.

    Subclasses are ``@params`` dataclasses: fields are hyper-parameters, learned state is set
    in ``__post_init__`` and ends in ``_``; ``state_dict`` returns it (tensors or JSON values).
    A subclass that sets its own ``name`` is a method: it is registered by its file existing in
    ``retain/strategies/``.
    """

    name: ClassVar[str] = "strategy"
    family: ClassVar[str] = "baseline"
    paper: ClassVar[str] = ""
    # Joint trains once on the whole stream instead of experience by experience.
    whole_stream: ClassVar[bool] = False
    # The kinds of stream the method is meant for; the learner and the config refuse the others.
    scenarios: ClassVar[tuple[str, ...]] = SCENARIO_KINDS
    # Whether the method writes the model in closed form at experience ends (SLDA): gradient
    # steps would be overwritten, so the learner takes none.
    closed_form: ClassVar[bool] = False
    # Whether ``before_experience`` may swap the experience's training set (ctx.replace_train_set).
    replaces_train_set: ClassVar[bool] = False
    # What the method needs of the model, checked by the config and met by the conformance suite:
    # "fixed_features" (no backbone weight trains, a linear head), "mlp" (an MLP backbone to grow
    # columns from), "lora_text" (a text backbone with LoRA adapters), "detector" (an object
    # detector: ``retain.engine.detection``).
    needs: ClassVar[tuple[str, ...]] = ()
    # Why its state may grow with the stream (None: it stays bounded; the conformance suite checks).
    grows: ClassVar[str | None] = None
    # Whether the method learns from per-step hooks alone (usable with partial_fit).
    online: ClassVar[bool] = False
    online_hint: ClassVar[str] = "run it in hybrid mode, where consolidations are experiences"
    # Whether it may train across ranks (``retain.engine.distributed``): False for methods whose
    # hooks take gradient passes of their own, which DistributedDataParallel does not synchronise.
    distributed: ClassVar[bool] = True
    distributed_hint: ClassVar[str] = "its memory learns from each step's rows (update: stream), one rank's share"
    # Whether it applies to a generative language model (``retain.engine.generative``): rows are
    # sequences there, with no class labels, features or heads to read.
    generative: ClassVar[bool] = False
    # Whether it applies to an object detector (``retain.engine.detection``); those that also say
    # ``generative`` apply there too. A method written for detectors alone needs "detector".
    detection: ClassVar[bool] = False
    # The knobs ``retain tune`` searches when the config names none: parameter -> range, as
    # ``{"low": 0.1, "high": 10, "log": True}`` or ``{"choices": [...]}`` (integers for integer fields).
    tunable: ClassVar[dict[str, dict[str, Any]]] = {}

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        """Before training on ``ctx.experience``: grow heads, snapshot the old model, replace the train set."""

    def batch(self, learner: LearnerView, step: Step) -> Step:
        """Each step: return the batch to train on (e.g. with replayed samples appended)."""
        return step

    def task_loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        """Each step: the loss to minimise instead of cross-entropy over every row."""
        raise NotImplementedError

    def loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        """Each step: a term added to the task loss (penalty or distillation)."""
        raise NotImplementedError

    def after_backward(self, learner: LearnerView, step: Step) -> None:
        """After ``backward()``, before the optimizer step: edit gradients."""

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        """After training on ``ctx.experience``: estimate importances, update memories."""

    def memory(self) -> Memory | None:
        """The samples of the past this method keeps and replays (BatchNorm re-estimation and
        hybrid consolidations use them too), or None."""
        return None

    def memories(self) -> dict[str, Memory]:
        """Every memory the method keeps, by name: the replay ``memory()`` and any other (BiC's
        held-out one). A loaded learner checks each against its model."""
        memory = self.memory()
        return {"memory": memory} if memory is not None else {}

    def supports_distributed(self) -> bool:
        """Whether the method trains right across several processes (``retain run --nproc``)."""
        return self.distributed

    def supports_online(self) -> bool:
        """Whether ``partial_fit`` may use this strategy (it learns without experience ends)."""
        return self.online

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters, enough to rebuild the strategy."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def state_dict(self) -> dict[str, Any]:
        """Learned state: a flat dict of tensors and JSON-able values."""
        return {}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        """Restore what ``state_dict`` returned (tensors already on the learner's device)."""


def implements(strategy: Strategy, hook: str) -> bool:
    """Whether ``strategy`` overrides ``hook`` (the learner skips the ones it does not)."""
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def flatten(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unflatten(prefix: str, state: dict[str, Any]) -> dict[str, Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}


__all__ = ["FAMILIES", "HOOKS", "Strategy", "flatten", "implements", "params", "unflatten"]
