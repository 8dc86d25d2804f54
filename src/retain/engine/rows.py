"""The learner of models trained on rows of one shape by AdamW: a language model, a speech recogniser, a detector.

What such learners share, whatever a row holds (tokens, audio features, an image and its boxes): rows of
one shape, so a replay memory stores and mixes them like any other samples; ``epochs`` passes of
``batch_size`` shuffled rows an experience; AdamW, a fresh one each experience, after a gradient clip; a
fit that fails or diverges leaves the learner as it was; the copy kept for that shares the weights that
never train. The step itself is the classifier learner's (``retain.engine.learner.Trainer``). A subclass
says how a batch becomes outputs (``_logits``), what the task loss is (``row_loss``), what an experience
adds to the model before it trains (``_begin``) and how it is saved.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar, cast

import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from retain.data import Experience
from retain.engine import persist
from retain.engine.learner import Trainer
from retain.strategies import STRATEGIES, Strategy
from retain.strategies.contract import ExperienceContext, Ranks, Step, scenario_problem

SUFFIXES = {"model": "safetensors", "state": "safetensors", "learner": "json"}
M = TypeVar("M", bound=torch.nn.Module)  # the model a row learner trains


class _Configured(Protocol):
    """What a save reads of every row learner's model beyond a module's: its config."""

    def get_config(self) -> dict[str, Any]: ...


def check_strategy(strategy: Strategy, applies: Callable[[type[Strategy]], bool], model: str) -> None:
    """Refuse, with the reason and the strategies that do apply, a strategy that does not apply to ``model``
    (``applies``: whether a strategy class does), or whose memory balances classes a row does not have."""
    if not applies(type(strategy)):
        allowed = ", ".join(name for name, cls in STRATEGIES.items() if applies(cls))
        raise ValueError(f"{strategy.name} does not apply to {model} (it needs class labels, features or heads); "
                         f"choose from: {allowed}")
    memory = strategy.memory()
    if memory is not None and memory.policy != "reservoir":
        raise ValueError(f"{strategy.name}: these rows have no one class to balance a memory by; "
                         f"use policy: reservoir (got {memory.policy})")


class RowLearner(Trainer, Generic[M]):
    """Trains a model experience by experience on rows of one shape.

    ``fit(experience)`` trains on ``x_train``/``y_train``/``t_train``, ``epochs`` passes of ``batch_size``
    rows, AdamW at ``lr`` with gradient norms clipped at ``clip``. ``seen_classes_`` are what the
    strategies take for classes (a translation's directions, a detector's object classes).
    """

    _restored: tuple[str, ...] = ("seen_classes_", "task_classes_", "steps_")
    kind: ClassVar[str]  # what ``retain.engine.persist`` records a save as
    model: M

    def __init__(self, model: M, strategies: Sequence[Strategy] = (), *, lr: float = 3e-4,
                 epochs: int = 1, batch_size: int = 8, clip: float = 1.0, seed: int = 0, device: str = "cpu") -> None:
        self.strategies = list(strategies)
        self._bind()
        self.model = model.to(device)
        self.lr, self.epochs, self.batch_size, self.clip = lr, epochs, batch_size, clip
        self.seed, self.device = seed, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.ranks = Ranks()
        self.optimizer: torch.optim.Optimizer | None = None
        self._trainable = self._requires_grad()
        self.seen_classes_: list[int] = []
        self.task_classes_: dict[int, list[int]] = {}
        self.steps_ = 0

    # What strategies may read (retain.strategies.contract.LearnerView); trainable is Trainer's.
    @property
    def bulk_size(self) -> int:
        return self.batch_size

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
            yield

    def features(self, x: Tensor, t: Tensor | None = None, batch_size: int = 1024) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no feature vectors for a strategy to use")

    def predict_logits(self, x: Tensor, t: Tensor | int | None = None, batch_size: int = 1024) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no class logits for a strategy to use")

    def fit(self, experience: Experience, progress: bool = False) -> Self:
        """Train on one experience. A fit that fails midway, a diverging one included (``Diverged``: the
        loss turned NaN or infinite), leaves the weights, the strategies' state and the counters as they were."""
        return self._guarded(lambda: self._fit(experience, progress))

    def _begin(self, experience: Experience) -> list[int]:
        """Prepare the model for an experience (a new adapter, a wider head); return its classes."""
        raise NotImplementedError

    def _end(self, classes: list[int]) -> None:
        """Record what an experience taught (by default each class is a task of its own: a direction)."""
        self.seen_classes_ = sorted(set(self.seen_classes_) | set(classes))
        for c in classes:
            self.task_classes_[c] = [c]

    def _fit(self, experience: Experience, progress: bool) -> Self:
        for s in self.strategies:
            if (problem := scenario_problem(s, experience.scenario)) is not None:
                raise ValueError(problem)
        ctx = ExperienceContext(experience)
        classes = self._begin(experience)
        self._experience_hook("before_experience", ctx)
        x, y, t = ctx.train_set
        self._trainable = self._requires_grad()
        self.optimizer = torch.optim.AdamW(self._trainable, lr=self.lr, weight_decay=0.0)
        self.model.train()
        steps = self.epochs * math.ceil(len(y) / self.batch_size)
        source = (x, y, t)  # one object for the whole fit: a distiller caches its old outputs by it
        with tqdm(total=steps, disable=not progress, desc=f"experience {experience.id}", unit="step",
                  leave=False) as bar:
            for epoch in range(self.epochs):
                order = torch.randperm(len(y), generator=self.generator)
                for start in range(0, len(y), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    self._train_step(Step(x[rows], y[rows], t[rows], incoming=len(rows), fresh=epoch == 0,
                                          experience_id=experience.id, rows=rows, source=source))
                    bar.update(1)
        self.optimizer = None  # AdamW's moments (twice the trained weights) are not kept between experiences
        self._check_finite(experience)
        self._experience_hook("after_experience", ctx)
        self._end(classes)
        return self

    def train_step(self, step: Step, optimizer: torch.optim.Optimizer) -> float:
        """One step of ``optimizer`` (over :attr:`trainable`) on ``step``'s rows and whatever the
        ``batch`` hooks add, as ``fit`` takes it; returns the loss (the benchmarks time it)."""
        self.model.train()
        self.optimizer = optimizer
        return self._train_step(step)

    def _update(self, step: Step) -> None:
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self._trainable, self.clip)
        assert self.optimizer is not None  # built by the fit that steps
        self.optimizer.step()

    def _model_copy(self) -> torch.nn.Module:
        # Weights that never train (a frozen encoder or backbone, the base weights under adapters) are
        # shared by the copy a failed fit restores: they are not duplicated for a fit.
        frozen = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        return copy.deepcopy(self.model, frozen)

    # -- saving: the weights a save keeps, the settings that rebuild the learner, a kind's own fields ------
    @classmethod
    def _saved_names(cls, model: M) -> set[str]:
        """The names of ``model``'s weights a save keeps."""
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size, "clip": self.clip,
                "seed": self.seed}

    def _own_meta(self) -> dict[str, Any]:
        return {}

    def save(self, folder: str | Path) -> Path:
        """The weights that train (all but what a package holds: a frozen backbone or base model), the
        strategies' state and what rebuilds them, as ``folder``'s next generation (atomic, with
        checksums: ``retain.engine.persist``)."""
        names = self._saved_names(self.model)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if k in names}
        tensors: dict[str, Tensor] = {"learner.rng": self.generator.get_state()}  # training continues alike
        meta = {"format": persist.FORMAT_VERSION, "model": cast(_Configured, self.model).get_config(),
                "training": self._settings(), "strategies": persist.strategies_to_save(self.strategies, tensors),
                "seen_classes": self.seen_classes_, "steps": self.steps_} | self._own_meta()
        parts = {"model": safetensors_bytes(weights), "state": safetensors_bytes(tensors),
                 "learner": json.dumps(meta, indent=1).encode()}
        return persist.write_generation(folder, parts, SUFFIXES, kind=self.kind)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Self:
        """A learner as :meth:`save` left it (weights a package holds come from it again). Every file is
        checked against its checksum and the JSON against the kind's schema with bounds before anything
        is built; a problem raises ``persist.LoadError`` naming the file."""
        path = Path(folder)
        saved = persist.read_generation(path, cls.kind)
        meta = persist.saved_rows(saved.parts["learner"], path, cls.kind)
        state = persist.read_tensors(saved.parts["state"], path, "state")
        weights = persist.read_tensors(saved.parts["model"], path, "model")
        strategies = persist.make_strategies(meta.strategies, path)
        model = cls._model_of(meta)
        return cls._assembled(model, cls._saved_names(model), weights, strategies, meta, state, path, device)

    @classmethod
    def _model_of(cls, meta: Any) -> M:
        """The model a validated save's ``meta`` describes, before its weights are loaded."""
        raise NotImplementedError

    @classmethod
    def _assembled(cls, model: M, names: set[str], weights: dict[str, Tensor],
                   strategies: list[Strategy], meta: Any, state: dict[str, Tensor], path: Path, device: str) -> Self:
        """A learner of ``model`` holding its saved ``weights`` (the ``names`` a save keeps, checked
        against them), its strategies' state, random state and counters, as a validated ``meta`` says."""
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k in names}
        found = {k: tuple(v.shape) for k, v in weights.items()}
        if found != expected:
            diff = sorted(set(expected.items()) ^ set(found.items()))[0]
            raise persist.LoadError(f"{path}: the model config does not describe the saved weights (first "
                                    f"difference: {diff[0]} {diff[1]})")
        model.load_state_dict(weights, strict=False)
        try:
            learner = cls(model, strategies, device=device, **meta.training.model_dump())
        except ValueError as err:
            raise persist.LoadError(f"{path}: the saved strategies do not fit this model ({err})") from None
        persist.set_generator(learner.generator, state, path)
        persist.load_states(strategies, meta.strategies, state, learner, path)
        learner.seen_classes_, learner.steps_ = meta.seen_classes, meta.steps
        learner._loaded(meta)
        return learner

    def _loaded(self, meta: Any) -> None:
        """Set what a subclass keeps beyond the classes and steps from a validated save's ``meta``."""
        self.task_classes_ = {c: [c] for c in self.seen_classes_}
