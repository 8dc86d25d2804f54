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

from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast, dataclass_transform

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass
from torch import Tensor, nn

from retain.strategies.contract import HOOKS, SCENARIO_KINDS, ExperienceContext, LearnerView, Step

if TYPE_CHECKING:
    import dataclasses

    from retain.strategies.memory import Memory

_STRATEGY_DATACLASS = dataclass(config=ConfigDict(extra="forbid", arbitrary_types_allowed=True))
_S = TypeVar("_S")


@dataclass_transform()  # type checkers see the fields as the constructor's parameters
def params(cls: type[_S]) -> type[_S]:
    """The decorator of every strategy class: a pydantic dataclass whose fields are its hyper-parameters,
    validated on construction (a wrong type, an unknown name or an impossible value raises pydantic's
    ``ValidationError`` naming the field).

    Args:
        cls: the strategy class.

    Returns:
        The class as a pydantic dataclass.
    """
    return cast("type[_S]", _STRATEGY_DATACLASS(cls))  # the same class, its fields made validated parameters

FAMILIES = ("baseline", "replay", "regularization", "gradient_projection", "prototype", "architecture")
"""The families a method belongs to (its ``family``), in the order ``retain strategies`` lists them."""


class Strategy:
    """Base class: every hook is optional and does nothing by default.

    Subclasses are ``@params`` dataclasses: fields are hyper-parameters, learned state is set
    in ``__post_init__`` and ends in ``_``; ``state_dict`` returns it (tensors or JSON values).
    A subclass that sets its own ``name`` is a method: it is registered by its file existing in
    ``retain/strategies/``.

    What a method declares, as class attributes (the learner, the config and the conformance suite
    rely on them):

    Attributes:
        name: the registry name (``make_strategy(name)``, a config's ``strategies``).
        family: one of :data:`FAMILIES`.
        paper: the paper the method comes from.
        whole_stream: train once on the whole stream instead of experience by experience (Joint).
        scenarios: the kinds of stream the method is meant for; the learner and the config refuse the others.
        closed_form: the method writes the model in closed form at experience ends (SLDA): gradient steps
            would be overwritten, so the learner takes none.
        replaces_train_set: ``before_experience`` may swap the experience's training set
            (``ctx.replace_train_set``).
        needs: what the method needs of the model, checked by the config and met by the conformance suite:
            ``"fixed_features"`` (no backbone weight trains, a linear head), ``"mlp"`` (an MLP backbone to grow
            columns from), ``"lora_text"`` (a text backbone with LoRA adapters), ``"detector"`` (an object
            detector: ``retain.engine.detection``).
        grows: why its state may grow with the stream; None: it stays bounded (the conformance suite checks).
        online: the method learns from per-step hooks alone (usable with ``partial_fit``).
        online_hint: what to do instead when it does not, for the refusal's message.
        distributed: it may train across ranks (``retain.engine.distributed``); False for methods whose
            hooks take gradient passes of their own, which DistributedDataParallel does not synchronise.
        distributed_hint: why it may not, for the refusal's message.
        generative: it applies to a generative language model (``retain.engine.generative``): rows are
            sequences there, with no class labels, features or heads to read.
        detection: it applies to an object detector (``retain.engine.detection``); those that also say
            ``generative`` apply there too. A method written for detectors alone needs ``"detector"``.
        tunable: the knobs ``retain tune`` searches when the config names none: parameter -> range, as
            ``{"low": 0.1, "high": 10, "log": True}`` or ``{"choices": [...]}`` (integers for integer fields).
    """

    name: ClassVar[str] = "strategy"
    family: ClassVar[str] = "baseline"
    paper: ClassVar[str] = ""
    whole_stream: ClassVar[bool] = False
    scenarios: ClassVar[tuple[str, ...]] = SCENARIO_KINDS
    closed_form: ClassVar[bool] = False
    replaces_train_set: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()
    grows: ClassVar[str | None] = None
    online: ClassVar[bool] = False
    online_hint: ClassVar[str] = "run it in hybrid mode, where consolidations are experiences"
    distributed: ClassVar[bool] = True
    distributed_hint: ClassVar[str] = "its memory learns from each step's rows (update: stream), one rank's share"
    generative: ClassVar[bool] = False
    detection: ClassVar[bool] = False
    tunable: ClassVar[dict[str, dict[str, Any]]] = {}
    if TYPE_CHECKING:  # set on every subclass by @params
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def before_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        """Before training on ``ctx.experience``: grow heads, snapshot the old model, replace the train set.

        Args:
            learner: what the strategy may read of the learner.
            ctx: the experience, the training set the learner will train on, and notes for ``after_experience``.
        """

    def batch(self, learner: LearnerView, step: Step) -> Step:
        """Each step: return the batch to train on (e.g. with replayed samples appended).

        Args:
            learner: what the strategy may read of the learner.
            step: the step's batch; rows are appended after its ``incoming`` ones.

        Returns:
            The step to train on (usually ``step`` itself, extended).
        """
        return step

    def task_loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        """Each step: the loss to minimise instead of cross-entropy over every row.

        Args:
            learner: what the strategy may read of the learner.
            step: the step's batch, with what the ``batch`` hooks appended.
            logits: the model's outputs on ``step.x``.

        Returns:
            A scalar loss.
        """
        raise NotImplementedError

    def loss(self, learner: LearnerView, step: Step, logits: Tensor) -> Tensor:
        """Each step: a term added to the task loss (penalty or distillation).

        Args:
            learner: what the strategy may read of the learner.
            step: the step's batch, with what the ``batch`` hooks appended.
            logits: the model's outputs on ``step.x``.

        Returns:
            A scalar term (a zero scalar when there is nothing to add yet).
        """
        raise NotImplementedError

    def after_backward(self, learner: LearnerView, step: Step) -> None:
        """After ``backward()``, before the optimizer step: edit gradients.

        Args:
            learner: what the strategy may read of the learner (``learner.trainable`` holds the gradients).
            step: the step just back-propagated.
        """

    def after_experience(self, learner: LearnerView, ctx: ExperienceContext) -> None:
        """After training on ``ctx.experience``: estimate importances, update memories.

        Args:
            learner: what the strategy may read of the learner.
            ctx: the experience and the training set the learner trained on.
        """

    def memory(self) -> Memory | None:
        """The samples of the past this method keeps and replays (BatchNorm re-estimation and
        hybrid consolidations use them too), or None.

        Returns:
            The replay memory, or None for a method that keeps none.
        """
        return None

    def memories(self) -> dict[str, Memory]:
        """Every memory the method keeps, by name: the replay ``memory()`` and any other (BiC's
        held-out one). A loaded learner checks each against its model.

        Returns:
            Memory by name (the name error messages use); empty for a method that keeps none.
        """
        memory = self.memory()
        return {"memory": memory} if memory is not None else {}

    def supports_distributed(self) -> bool:
        """Whether the method trains right across several processes (``retain run --nproc``).

        Returns:
            ``distributed`` unless a setting decides it (a stream memory sees one rank's rows).
        """
        return self.distributed

    def supports_online(self) -> bool:
        """Whether ``partial_fit`` may use this strategy (it learns without experience ends).

        Returns:
            ``online`` unless a setting decides it (``update="stream"``).
        """
        return self.online

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters, enough to rebuild the strategy.

        Returns:
            Every field by name: ``type(self)(**get_config())`` is the same strategy, untrained.
        """
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def state_dict(self) -> dict[str, Any]:
        """Learned state: a flat dict of tensors and JSON-able values.

        Returns:
            The state by name; empty for a method that learns nothing.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any], learner: LearnerView) -> None:
        """Restore what ``state_dict`` returned (tensors already on the learner's device).

        Args:
            state: what :meth:`state_dict` returned, as saved and loaded.
            learner: the learner it is loaded into (its device, its model to rebuild old models beside).
        """


def implements(strategy: Strategy, hook: str) -> bool:
    """Whether ``strategy`` overrides ``hook`` (the learner skips the ones it does not).

    Args:
        strategy: any strategy.
        hook: a name of :data:`HOOKS`.

    Returns:
        True when its class, or a base below :class:`Strategy`, defines the hook.
    """
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def head_width(head: nn.Module) -> int:
    """The feature width a classifier head reads (every head of ``retain.models`` has ``in_features``),
    for a method that wraps or replaces the model's head.

    Args:
        head: the model's head.

    Returns:
        Its ``in_features``.
    """
    return cast(int, head.in_features)


def flatten(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Tensors under ``prefix.``: one part of a strategy's flat state.

    Args:
        prefix: the part's name.
        tensors: the part's tensors, by name.

    Returns:
        The same tensors, each name prefixed with ``prefix`` and a dot.

    >>> import torch
    >>> flatten("anchor", {"fc.weight": torch.zeros(1)})
    {'anchor.fc.weight': tensor([0.])}
    """
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unflatten(prefix: str, state: dict[str, Any]) -> dict[str, Tensor]:
    """The part of a flat state that :func:`flatten` put under ``prefix``.

    Args:
        prefix: the part's name.
        state: a strategy's flat state.

    Returns:
        The entries under ``prefix.``, the prefix removed (empty when there are none).

    >>> import torch
    >>> unflatten("anchor", {"anchor.fc.weight": torch.zeros(1), "count": 1})
    {'fc.weight': tensor([0.])}
    """
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}


__all__ = ["FAMILIES", "HOOKS", "Strategy", "flatten", "implements", "params", "unflatten"]
