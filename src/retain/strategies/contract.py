"""The strategy contract: the typed ``Step``, the experience context, and what a strategy may read of the learner.

The learner calls a strategy's hooks in this order (every hook is optional):

==========================================  =========================================================
``before_experience(learner, ctx)``         before an experience: grow heads, snapshot the old model,
                                            replace ``ctx``'s training set (a declared capability)
``batch(learner, step) -> Step``            each step: append replayed rows after the incoming ones
``task_loss(learner, step, logits)``        each step, at most one strategy: replace the cross-entropy
``loss(learner, step, logits)``             each step, added: distillation, penalties
``after_backward(learner, step)``           before the optimizer step: edit gradients
``after_experience(learner, ctx)``          after an experience: importances, memories, closed-form heads
==========================================  =========================================================

A strategy reads the learner only through :class:`LearnerView` (a test walks every strategy
module to hold them to it) and writes nothing on it: per-step data and scratch travel on the
:class:`Step`, per-experience data on the :class:`ExperienceContext`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from retain.data import Experience
    from retain.models import Classifier

SCENARIO_KINDS = ("class_incremental", "task_incremental", "domain_incremental")
HOOKS = ("before_experience", "batch", "task_loss", "loss", "after_backward", "after_experience")
"""The hooks of :class:`~retain.strategies.Strategy`, in the order the learner calls them."""


@dataclass(frozen=True)
class Ranks:
    """The processes a learner trains on: this one is ``rank`` of ``world`` (see
    ``retain.engine.distributed``). One process: rank 0 of 1, and every method here is the identity."""

    rank: int = 0
    world: int = 1

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def take(self, rows: Tensor) -> Tensor:
        """This rank's share of ``rows``: every ``world``-th, from ``rank``.

        >>> Ranks(1, 2).take(torch.arange(5)).tolist()
        [1, 3]
        """
        return rows[self.rank::self.world]

    def all_reduce_sum(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each tensor summed over the ranks, in place."""
        if self.world > 1:
            import torch.distributed as dist

            for v in tensors.values():
                dist.all_reduce(v, op=dist.ReduceOp.SUM)
        return tensors


class LearnerView(Protocol):
    """Everything a strategy may read of the learner. Nothing else, and nothing is written.

    Attributes:
        model: the network; a strategy may replace its head or backbone.
        device: where the model and the step's batch are.
        generator: every random choice a strategy makes draws from it.
        lr: the optimizer's learning rate.
        seen_classes_: classes of every experience (and online batch) learned so far.
        task_classes_: per task id, its classes.
        ranks: the processes training together (importances are summed over them).
    """

    model: Classifier
    device: torch.device
    generator: torch.Generator
    lr: float
    seen_classes_: list[int]
    task_classes_: dict[int, list[int]]
    ranks: Ranks

    @property
    def trainable(self) -> list[Tensor]:
        """The parameters the optimizer steps (what a gradient clip or projection covers)."""

    @property
    def bulk_size(self) -> int:
        """Rows per batch of a no-gradient pass over a whole training set."""

    def seeded(self) -> AbstractContextManager[None]:
        """A block run on torch's global RNG seeded from ``generator`` (e.g. to build a new layer).

        Returns:
            A context manager; the global RNG's state is restored when it exits.
        """

    def features(self, x: Tensor, t: Tensor | None = None, batch_size: int = 1024) -> Tensor:
        """Backbone features of ``x`` in evaluation mode, on the CPU.

        Args:
            x: inputs, on any device.
            t: their task ids; None: none passed (backbones that do not read them).
            batch_size: rows per forward pass.

        Returns:
            One feature row per input.
        """

    def predict_logits(self, x: Tensor, t: Tensor | int | None = None, batch_size: int = 1024) -> Tensor:
        """Logits over the global classes in evaluation mode, on the CPU.

        Args:
            x: inputs, on any device.
            t: their task ids (one per row, or one for all); None: task 0.
            batch_size: rows per forward pass.

        Returns:
            One row of logits per input.
        """

    def row_loss(self, step: Step, logits: Tensor) -> Tensor:
        """The task loss the learner uses when no strategy replaces it, over every row of ``step``
        (the cross-entropy; a speech recogniser's own: token cross-entropy or CTC; a detector's:
        CenterNet's, which also takes ``classes``: which heat channels each image's loss covers).

        Args:
            step: the step's batch (its labels ``step.y``).
            logits: the model's outputs on ``step.x``.

        Returns:
            The scalar loss, a mean over the rows (or tokens).
        """


# What LearnerView allows, by name (the conformance suite checks strategy modules against it).
LEARNER_VIEW = frozenset(LearnerView.__annotations__) | frozenset(
    k for k in vars(LearnerView) if not k.startswith("_"))


@dataclass(slots=True)
class Step:
    """One training step's batch and what the hooks pass along it.

    ``x``, ``y``, ``t`` are inputs, global class labels and task ids (on a generative model: token
    rows, next-token label rows and direction ids, ``retain.engine.generative``; on a detector: images,
    tables of boxes and zeros, ``retain.engine.detection``). The first ``incoming`` rows
    are the ones the step started with, in their original order; a ``batch`` hook appends what it
    adds after them. During ``fit``, ``rows`` are the indices of those incoming rows in ``source``
    (the training set being trained on), which lets a distiller compute the frozen old model's
    outputs on the training set once per experience (see ``distillation.OldOutputs``); outside
    ``fit`` both are ``None``. ``fresh`` is whether this is the first step on these incoming rows
    (a stream memory is offered them once). ``notes`` holds a strategy's per-step scratch between
    its own hooks, under its name. ``shard`` is (rank, world): across ranks, each process takes
    the rows ``rank::world`` of the global batch, its replayed rows included (``Memory.replay_into``).

    Attributes:
        x: the batch's inputs, incoming rows first.
        y: their labels (global class ids, token rows or box tables).
        t: their task ids.
        incoming: how many rows the step started with.
        fresh: whether this is the first step on these incoming rows.
        experience_id: the id of the experience being learned (what a memory records with a sample).
        rows: during ``fit``, the incoming rows' indices in ``source``; else None.
        source: during ``fit``, the training set ``(x, y, t)`` being trained on; else None.
        notes: each strategy's per-step scratch, under its name.
        shard: ``(rank, world)`` of the process taking the step.

    >>> step = Step(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long), incoming=2)
    >>> step.append(torch.ones(1, 3), torch.tensor([4]), torch.zeros(1, dtype=torch.long)).y.tolist()
    [0, 1, 4]
    >>> step.incoming, len(step.added()[1])
    (2, 1)
    """

    x: Tensor
    y: Tensor
    t: Tensor
    incoming: int
    fresh: bool = True
    experience_id: int = 0
    rows: Tensor | None = None
    source: tuple[Tensor, Tensor, Tensor] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] = (0, 1)

    def append(self, x: Tensor, y: Tensor, t: Tensor) -> Step:
        """Add rows after the ones already in the batch (moved to the batch's device); returns the step.

        Args:
            x: the rows' inputs.
            y: their labels.
            t: their task ids.

        Returns:
            This step, extended.
        """
        self.x = torch.cat([self.x, x.to(self.x.device)])
        self.y = torch.cat([self.y, y.to(self.y.device)])
        self.t = torch.cat([self.t, t.to(self.t.device)])
        return self

    def new(self) -> tuple[Tensor, Tensor, Tensor]:
        """The incoming rows.

        Returns:
            ``(x, y, t)`` of the first ``incoming`` rows.
        """
        n = self.incoming
        return self.x[:n], self.y[:n], self.t[:n]

    def added(self) -> tuple[Tensor, Tensor, Tensor]:
        """The rows the ``batch`` hooks appended.

        Returns:
            ``(x, y, t)`` of the rows after the first ``incoming`` (empty when none were).
        """
        n = self.incoming
        return self.x[n:], self.y[n:], self.t[n:]


class ExperienceContext:
    """What the experience hooks receive: the experience and the training set the learner will
    train on. A strategy that declares ``replaces_train_set`` may swap that set (BiC holds some
    samples out, GDumb trains on its memory alone, Cumulative on everything seen). ``notes`` holds
    what a strategy passes from its ``before_experience`` to its ``after_experience``.

    Args:
        experience: the experience about to be learned (or just learned).

    Attributes:
        experience: that experience.
        notes: each strategy's scratch between its two experience hooks, under its name.

    >>> from retain.data import Experience
    >>> x = torch.zeros(4, 2)
    >>> ctx = ExperienceContext(Experience(x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1])))
    >>> with ctx.written_by(object()):
    ...     ctx.replace_train_set(x[:2], torch.tensor([0, 1]), torch.tensor([0, 0]))
    Traceback (most recent call last):
    ...
    PermissionError: object replaces the training set without declaring replaces_train_set = True
    """

    def __init__(self, experience: Experience) -> None:
        self.experience = experience
        self._train_set = (experience.x_train, experience.y_train, experience.train_tasks())
        self._writer: Any = None
        self.notes: dict[str, Any] = {}

    @property
    def train_set(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, t)`` the learner trains on in this experience."""
        return self._train_set

    @property
    def id(self) -> int:
        """The experience's id."""
        return self.experience.id

    @property
    def classes(self) -> tuple[int, ...]:
        """The classes the experience brings."""
        return self.experience.classes

    @contextlib.contextmanager
    def written_by(self, strategy: Any) -> Iterator[ExperienceContext]:
        """The learner runs each strategy's experience hook inside this block.

        Args:
            strategy: the strategy whose hook runs (whether it may replace the training set is its own).

        Yields:
            This context, for that strategy.
        """
        self._writer = strategy
        try:
            yield self
        finally:
            self._writer = None

    def replace_train_set(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        """Train on ``(x, y, t)`` instead; only a strategy declaring ``replaces_train_set`` may.

        Args:
            x: the inputs to train on.
            y: their labels.
            t: their task ids.

        Raises:
            PermissionError: the strategy writing (``written_by``) does not declare ``replaces_train_set``.
            ValueError: ``x``, ``y`` and ``t`` differ in their number of rows.
        """
        if not getattr(self._writer, "replaces_train_set", False):
            raise PermissionError(f"{getattr(self._writer, 'name', type(self._writer).__name__)} replaces the "
                                  "training set without declaring replaces_train_set = True")
        if not len(x) == len(y) == len(t):
            raise ValueError(f"a training set needs as many x, y and t rows, got {len(x)}, {len(y)} and {len(t)}")
        self._train_set = (x, y, t)


def scenario_problem(strategy: Any, scenario: str) -> str | None:
    """Why ``strategy`` cannot learn a ``scenario`` stream, or None if it can: the one rule the
    learner and the config both apply."""
    if scenario in strategy.scenarios:
        return None
    return f"{strategy.name} supports {' and '.join(strategy.scenarios)} streams, not {scenario}"


def online_problem(strategy: Any) -> str | None:
    """Why ``partial_fit`` cannot use ``strategy`` without consolidations, or None if it can."""
    if strategy.supports_online():
        return None
    return f"{strategy.name} learns only at experience ends; {strategy.online_hint}"
