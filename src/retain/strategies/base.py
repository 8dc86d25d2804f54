"""The strategy contract: five optional hooks that the learner calls in a fixed order.

Per step the learner calls ``batch`` (may add samples), the model, ``loss`` (terms added to
the cross-entropy), ``backward``, ``after_backward`` (may edit gradients), then the optimizer.
Around each experience it calls ``before_experience`` and ``after_experience``.

A batch is ``(x, y, t)``: inputs, global class labels and task ids. The task ids are part of
the batch (DESIGN.md names only ``x, y``) because per-task heads and replay across tasks need
to know which head scores which sample. A ``batch`` hook keeps the incoming rows first, with
their inputs unchanged, and appends what it adds: during ``fit`` the learner's ``rows_`` names
the training-set rows the step started with (a contract extension: it lets the distilling
methods compute the frozen old model's outputs on the training set once per experience instead
of once per epoch; see ``importance.OldOutputs``), and in every step ``incoming_`` counts them, so
the rows after them are the ones the hooks added.

A sixth hook, ``task_loss``, is a second extension: a strategy may replace the cross-entropy over
every row that ``loss`` terms are added to (replay that weighs replayed rows, ER-ACE's asymmetric
loss, DER's cross-entropy over new rows only). Without it such a method had to add the
cross-entropy it wanted and subtract the learner's, computing the loss three times a step; at most
one strategy of a composition may replace it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import Tensor

if TYPE_CHECKING:
    from retain.data import Experience
    from retain.engine import Learner

SCENARIO_KINDS = ("class_incremental", "task_incremental", "domain_incremental")
HOOKS = ("before_experience", "batch", "task_loss", "loss", "after_backward", "after_experience")

# Strategy parameters are validated on construction: a wrong type, an unknown name or an
# impossible value raises pydantic's ValidationError naming the field.
params = dataclass(config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))


class Strategy:
    """Base class: every hook is optional and does nothing by default.

    Subclasses are ``@params`` dataclasses: fields are hyper-parameters, learned state is set
    in ``__post_init__`` and ends in ``_``; ``state_dict`` returns it (tensors or JSON values).
    """

    name: ClassVar[str] = "strategy"
    family: ClassVar[str] = "baseline"
    paper: ClassVar[str] = ""
    # Joint trains once on the whole stream instead of experience by experience.
    whole_stream: ClassVar[bool] = False
    # The kinds of stream the method is meant for; the learner refuses the others.
    scenarios: ClassVar[tuple[str, ...]] = SCENARIO_KINDS
    # Whether the method writes the model in closed form at experience ends (SLDA): gradient
    # steps would be overwritten, so the learner takes none (a contract extension: without it
    # such a method pays for epochs of SGD it throws away).
    closed_form: ClassVar[bool] = False
    # Whether the method learns from per-step hooks alone (usable with partial_fit).
    online: ClassVar[bool] = False
    online_hint: ClassVar[str] = "run it in hybrid mode, where consolidations are experiences"

    def before_experience(self, learner: Learner, exp: Experience) -> None:
        """Before training on ``exp``: grow heads, snapshot the old model, edit the train set."""

    def batch(self, learner: Learner, x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Each step: return the batch to train on (e.g. with replayed samples appended)."""
        return x, y, t

    def task_loss(self, learner: Learner, x: Tensor, y: Tensor, t: Tensor, logits: Tensor) -> Tensor:
        """Each step: the loss to minimise instead of cross-entropy over every row."""
        raise NotImplementedError

    def loss(self, learner: Learner, x: Tensor, y: Tensor, t: Tensor, logits: Tensor) -> Tensor:
        """Each step: a term added to the task loss (penalty or distillation)."""
        raise NotImplementedError

    def after_backward(self, learner: Learner) -> None:
        """After ``backward()``, before the optimizer step: edit gradients."""

    def after_experience(self, learner: Learner, exp: Experience) -> None:
        """After training on ``exp``: estimate importances, update memories."""

    def supports_online(self) -> bool:
        """Whether ``partial_fit`` may use this strategy (it learns without experience ends)."""
        return self.online

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters, enough to rebuild the strategy."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def state_dict(self) -> dict[str, Any]:
        """Learned state: a flat dict of tensors and JSON-able values."""
        return {}

    def load_state_dict(self, state: dict[str, Any], learner: Learner) -> None:
        """Restore what ``state_dict`` returned (tensors already on the learner's device)."""


def implements(strategy: Strategy, hook: str) -> bool:
    """Whether ``strategy`` overrides ``hook`` (the learner skips the ones it does not)."""
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def flatten(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unflatten(prefix: str, state: dict[str, Any]) -> dict[str, Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}
