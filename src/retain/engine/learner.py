"""The Learner: a model, an optimizer and strategies, trained one experience at a time."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from retain.data import Experience
from retain.engine import distributed, persist
from retain.engine.sgd import FusedSGD, scale_lr
from retain.models import Classifier, IncrementalHead, LinearHead, MultiHead
from retain.quality import check_batch, check_inputs
from retain.strategies import HOOKS, ExperienceContext, Memory, Step, Strategy, implements, make_strategy
from retain.strategies.contract import SCENARIO_KINDS, LearnerView, Ranks, online_problem, scenario_problem
from retain.util import evaluating, in_batches

CHUNK = 32  # batches gathered at once by fit


def cross_entropy(learner: Trainer, step: Step, logits: Tensor) -> Tensor:
    """The task loss unless a strategy replaces it: cross-entropy over every row."""
    return F.cross_entropy(logits, step.y)


class Diverged(ValueError):
    """Training produced a loss or weights that are not finite; the learner was restored."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when a GPU is present, else the CPU.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The torch device.

    Raises:
        ValueError: when ``device`` is none of those, or names CUDA on a machine without a GPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no CUDA GPU is available")
    return torch.device(device)


T = TypeVar("T")


class Trainer:
    """What every learner shares: the strategies' hooks, called in the contract's order
    (``retain.strategies.contract``), the training step built on them, and a fit that leaves the
    learner as it was when it fails or diverges.

    A learner sets ``model``, ``strategies``, ``generator``, ``optimizer``, ``ranks``, ``lr``,
    ``steps_`` and ``_trainable`` (what the optimizer steps), calls :meth:`_bind` once its strategies
    are set, names in ``_restored`` the attributes a failed fit puts back, and says how a step's
    batch becomes logits (:meth:`_logits`) and, if it does more than step the optimizer, how the
    weights are updated (:meth:`_update`). The classifier :class:`Learner` and the generative
    ``GenerativeLearner`` differ only there (and in how their fits walk the data).
    """

    _restored: tuple[str, ...] = ()  # attributes (counters, random state) a failed fit puts back
    model: torch.nn.Module
    strategies: list[Strategy]
    generator: torch.Generator
    optimizer: FusedSGD | torch.optim.Optimizer | None  # None between fits (built at the next one)
    ranks: Ranks
    lr: float
    steps_: int
    _trainable: list[Tensor]

    def _bind(self) -> None:
        """Collect the strategies' hooks, in list order."""
        self._hooks = {h: [getattr(s, h) for s in self.strategies if implements(s, h)]
                       for h in HOOKS if h not in ("before_experience", "after_experience")}
        # The experience hooks run with their strategy known: only a declared one may replace the train set.
        self._experience_hooks = {h: [s for s in self.strategies if implements(s, h)]
                                  for h in ("before_experience", "after_experience")}
        replacing = [s.name for s in self.strategies if implements(s, "task_loss")]
        if len(replacing) > 1:
            raise ValueError(f"{' and '.join(replacing)} each replace the task loss (cross-entropy over every "
                             "row); compose at most one of them")
        self._task_loss = self._hooks["task_loss"][0] if replacing else type(self).row_loss

    @property
    def trainable(self) -> list[Tensor]:
        """The parameters the optimizer steps (what a gradient clip or projection covers)."""
        return self._trainable

    def _requires_grad(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _experience_hook(self, hook: str, ctx: ExperienceContext) -> None:
        """Run ``before_experience`` or ``after_experience`` of every strategy that has it."""
        for s in self._experience_hooks[hook]:
            with ctx.written_by(s):
                getattr(s, hook)(self, ctx)

    def _train_step(self, step: Step) -> float:
        """One optimizer step on ``step``'s rows and what the ``batch`` hooks add; returns the loss."""
        step = self.step_batch(step)
        logits = self._logits(step)
        loss = self.objective(step, logits)
        value = loss.item()  # 0.2 us on the CPU; torch.isfinite(loss) costs 5 us, 2% of an MLP step
        # Stop before the optimizer writes it into the weights. Across ranks a rank stopping alone would
        # leave the others waiting in the gradient average: the averaged NaN reaches every rank's weights
        # instead, and the check after the experience stops them all (the learner is then restored).
        if not math.isfinite(value) and self.ranks.world == 1:
            raise Diverged(f"training diverged at step {self.steps_ + 1} (experience {step.experience_id}): the loss "
                           f"is {value}; a smaller learning rate (now {self.lr}) or penalty may help")
        assert self.optimizer is not None  # built by the fit (or partial_fit) that steps
        self.optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
        for hook in self._hooks["after_backward"]:
            hook(self, step)
        self._update(step)
        self.steps_ += 1
        return value

    def _logits(self, step: Step) -> Tensor:
        """The model's logits on the step's batch, laid out as the task loss reads them."""
        raise NotImplementedError

    def row_loss(self, step: Step, logits: Tensor) -> Tensor:
        """The task loss when no strategy replaces it: cross-entropy over every row.

        Args:
            step: the batch, its labels ``step.y``.
            logits: the model's logits on it.

        Returns:
            The mean loss, a scalar.
        """
        return cross_entropy(self, step, logits)

    def _update(self, step: Step) -> None:
        """Write the gradients into the weights."""
        assert self.optimizer is not None  # built by the fit that steps
        self.optimizer.step()

    def step_batch(self, step: Step) -> Step:
        """The batch a step trains on: the incoming rows and what the strategies' ``batch`` hooks append.

        Args:
            step: the incoming rows.

        Returns:
            The step each ``batch`` hook returned in turn (``step`` itself when there is none).
        """
        for hook in self._hooks["batch"]:
            step = hook(self, step)
        return step

    def objective(self, step: Step, logits: Tensor) -> Tensor:
        """What a training step minimises on a batch its ``batch`` hooks returned: the task loss
        (cross-entropy over every row unless a strategy replaces it) plus every ``loss`` term.

        Args:
            step: the batch, as :meth:`step_batch` returned it.
            logits: the model's logits on it.

        Returns:
            The loss to minimise, a scalar.
        """
        loss = self._task_loss(self, step, logits)
        for hook in self._hooks["loss"]:
            loss = loss + hook(self, step, logits)
        return loss

    def _check_finite(self, experience: Experience) -> None:
        """Refuse weights a fit left non-finite (across ranks a NaN loss does not stop the step)."""
        if not all(torch.isfinite(p).all() for p in self._trainable):
            raise Diverged(f"training diverged in experience {experience.id}: the weights are no longer finite "
                           f"(lr {self.lr})")

    def _guarded(self, fit: Callable[[], T]) -> T:
        """Run ``fit``; if it raises, the learner is put back as it was (a :class:`Diverged` says so)."""
        saved = self._checkpoint()
        try:
            return fit()
        except Diverged as err:
            self._restore(saved)
            raise Diverged(f"fit: {err}; the learner is as it was before this experience") from None
        except BaseException:
            self._restore(saved)
            raise

    def _checkpoint(self) -> dict[str, Any]:
        """What a failed fit restores: the model as it is, the strategies' state, random state, counters."""
        states = [{k: v.clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in s.state_dict().items()}
                  for s in self.strategies]
        return {"model": self._model_copy(), "strategies": states, "rng": self.generator.get_state(),
                "restored": {k: copy.deepcopy(getattr(self, k)) for k in self._restored}}

    def _model_copy(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)

    def _restore(self, saved: dict[str, Any]) -> None:
        self.model = saved["model"]
        for s, state in zip(self.strategies, saved["strategies"], strict=True):
            # every learner is the view its strategies read (a row learner's model is its own, not a Classifier)
            s.load_state_dict(state, cast(LearnerView, self))
        self.generator.set_state(saved["rng"])
        for k, v in saved["restored"].items():
            setattr(self, k, v)
        self.optimizer, self._trainable = None, self._requires_grad()


# The training knobs a config sets, a tuner searches and a deployment may retune: named here once.
KNOBS = ("lr", "epochs", "batch_size", "momentum", "backbone_lr", "lr_decay")

class Learner(Trainer):
    """Trains ``model`` on experiences with SGD and the given strategies.

    Strategies compose: their hooks run in list order (the contract: ``retain.strategies.contract``;
    the learner is the ``LearnerView`` they read; the step: :class:`Trainer`). The
    optimizer is rebuilt at every experience (a grown head has new parameters), so momentum
    does not carry across experiences. Same model initialisation and seed, same numbers.

    Args:
        model: the classifier to train (moved to ``device``).
        strategies: the continual-learning strategies, composed in this order; none: plain fine-tuning.
        lr: the learning rate of SGD, positive.
        momentum: SGD's momentum, in [0, 1).
        batch_size: incoming rows per step, at least 1 (replay strategies add theirs).
        epochs: passes over each experience, at least 1.
        device: ``auto`` (CUDA when there is a GPU), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of the learner's random choices (shuffles, memories, new layers).
        backbone_lr: the learning rate of a pretrained backbone's weights (heads and LoRA adapters keep
            ``lr``); None: ``lr`` for every weight.
        lr_decay: the factor the learning rates fall to, exponentially, by an experience's last step, in (0, 1];
            1: constant.

    Raises:
        ValueError: when a setting is out of range, or a strategy trains an object detector.
        TypeError: when a strategy is not a retain ``Strategy``.

    >>> from retain.data import class_incremental, load_dataset
    >>> from retain.models import make_model
    >>> from retain.strategies import Replay
    >>> stream = class_incremental(load_dataset("digits"), 5)
    >>> _ = torch.manual_seed(0)
    >>> model = make_model("mlp", stream.input_shape, 10, hidden=(128,))
    >>> learner = Learner(model, [Replay(100)], epochs=5, lr=0.05, device="cpu")
    >>> for exp in stream:
    ...     learner = learner.fit(exp)
    >>> [round(a, 2) for a in learner.evaluate(stream)]
    [0.88, 0.9, 0.94, 0.95, 0.85]
    """

    _restored = ("seen_classes_", "task_classes_", "experiences_seen_", "steps_", "samples_seen_", "_torch_rng",
                 "_experience_id")
    model: Classifier

    def __init__(
        self,
        model: Classifier,
        strategies: Sequence[Strategy] = (),
        *,
        lr: float = 0.01,
        momentum: float = 0.9,
        batch_size: int = 32,
        epochs: int = 1,
        device: str = "auto",
        seed: int = 0,
        backbone_lr: float | None = None,
        lr_decay: float = 1.0,
    ) -> None:
        for name, value, ok, allowed in (
            ("lr", lr, lr > 0, "a positive number"),
            ("momentum", momentum, 0 <= momentum < 1, "a number in [0, 1)"),
            ("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "an integer >= 1"),
            ("epochs", epochs, isinstance(epochs, int) and epochs >= 1, "an integer >= 1"),
            ("backbone_lr", backbone_lr, backbone_lr is None or backbone_lr > 0, "a positive number or None"),
            ("lr_decay", lr_decay, 0 < lr_decay <= 1, "a number in (0, 1]"),
        ):
            if not ok:
                raise ValueError(f"Learner {name} must be {allowed}, got {value!r}")
        for s in strategies:
            if not isinstance(s, Strategy):
                raise TypeError(f"strategies must be retain Strategy objects, got {type(s).__name__}")
            if "detector" in s.needs:
                raise ValueError(f"{s.name} trains an object detector (retain.engine.detection.DetectionLearner), "
                                 "not a classifier")
        self.device = resolve_device(device)
        self.ranks = distributed.current()  # several processes: each trains on its share of every step
        self.model = model.to(self.device)
        self.strategies = list(strategies)
        self.lr, self.momentum, self.batch_size, self.epochs, self.seed = lr, momentum, batch_size, epochs, seed
        self.backbone_lr = backbone_lr  # a pretrained backbone usually wants a smaller step than the head
        # Within each experience the learning rates fall exponentially, step by step, to lr_decay times their
        # value by its last step (one of the rehearsal tricks of Buzzega et al. 2020); 1: constant.
        self.lr_decay = lr_decay
        self.generator = torch.Generator().manual_seed(seed)
        self._bind()
        self.seen_classes_: list[int] = []
        self.task_classes_: dict[int, list[int]] = {}
        self.class_names_: list[str] = []  # the label name of each class id, when the data named them
        self.experiences_seen_ = 0
        self.steps_ = 0
        self.samples_seen_ = 0  # through partial_fit
        self.optimizer: FusedSGD | torch.optim.Optimizer | None = None
        self._ddp: torch.nn.Module | None = None  # the model wrapped to average gradients across ranks
        # The trainable parameters, as of the optimizer's build (or construction): what a step
        # updates, so what a gradient clip or projection covers, without walking the modules each step.
        self._trainable: list[Tensor] = self._requires_grad()
        self._experience_id = 0  # of the last experience fit (partial_fit's rows join it in memories)
        # Dropout masks (and EfficientNet's drop connect) come from torch's global RNG. The learner
        # keeps that RNG's state as its own, so the masks continue from where it stopped, whatever
        # else the process draws, and save/load carries them: a reloaded learner trains on exactly.
        self._stochastic = False  # whether a training forward pass draws random numbers (set with the optimizer)
        self._torch_rng = torch.get_rng_state()

    def retune(self, training: dict[str, Any], knobs: dict[str, dict[str, Any]]) -> Learner:
        """Set tuned knobs on a learner that has learned already: ``training`` (lr, epochs,
        batch_size, momentum, backbone_lr, lr_decay) and, per strategy name, the values of the knobs its
        class declares ``tunable`` (others would change the shape of what it learned, e.g. a
        memory's size, and are refused). What the strategies learned is kept.

        Args:
            training: new values of training knobs (``lr``, ``epochs``, ``batch_size``, ``momentum``,
                ``backbone_lr``, ``lr_decay``).
            knobs: per strategy name, new values of the knobs its class declares ``tunable``.

        Returns:
            The learner itself.

        Raises:
            ValueError: when a key is no training knob, names no strategy of the learner, or a knob is not tunable.

        >>> from retain.models import make_model
        >>> from retain.strategies import Replay
        >>> learner = Learner(make_model("mlp", (4,), 3, hidden=(8,)), [Replay(50)], device="cpu")
        >>> learner.retune({"lr": 0.1}, {"replay": {"weight": 1.0}}).strategies[0].weight, learner.lr
        (1.0, 0.1)
        >>> learner.retune({}, {"replay": {"memory_size": 10}})
        Traceback (most recent call last):
        ...
        ValueError: retune: replay.memory_size cannot change once learned; tunable: ratio, weight
        """
        for key in training:
            if key not in KNOBS:
                raise ValueError(f"retune: {key} is not a training knob ({', '.join(KNOBS)})")
        by_name = {s.name: s for s in self.strategies}
        for name, values in knobs.items():
            if name not in by_name:
                raise ValueError(f"retune: this learner has no strategy {name!r} ({', '.join(by_name)})")
            fixed = sorted(set(values) - set(type(by_name[name]).tunable))
            if fixed:
                raise ValueError(f"retune: {name}.{', '.join(fixed)} cannot change once learned; tunable: "
                                 f"{', '.join(type(by_name[name]).tunable)}")
        strategies = []
        for s in self.strategies:
            new = make_strategy(s.name, **(s.get_config() | knobs.get(s.name, {})))
            new.load_state_dict(s.state_dict(), self)
            strategies.append(new)
        for key, value in training.items():
            setattr(self, key, value)
        self.strategies, self.optimizer = strategies, None
        self._bind()
        return self

    # -- training ---------------------------------------------------------------------
    def fit(self, experience: Experience | Any, y: Any = None, t: Any = None, *, epochs: int | None = None,
            incoming: bool = True) -> Learner:
        """Train on one experience for ``epochs`` epochs (the learner's by default), calling
        the strategies' hooks. ``fit(x, y[, t])`` takes arrays (tensors, numpy, lists) as one
        experience. Stream memories are offered each sample once, in the first epoch;
        ``incoming=False`` (a consolidation over data already seen) offers none.

        The data is checked before anything changes (``ValueError`` naming the problem), and a fit
        that fails midway, a diverging one included (:class:`Diverged`), leaves the learner as it was.

        Args:
            experience: the experience to learn, or its inputs ``x`` (tensor, numpy array or list).
            y: with inputs ``x``: their labels, one class id per row.
            t: with inputs ``x``: their task ids (one per row, or one for all); None: task 0.
            epochs: passes over the experience; None: the learner's ``epochs``.
            incoming: whether the data is new, so stream memories are offered it.

        Returns:
            The learner itself.

        Raises:
            ValueError: when the data cannot be learned (``BatchRefused`` names the problem).
            Diverged: when the loss or the weights became non-finite (the learner is restored).
            TypeError: when an Experience and arrays are both given, or arrays without labels.

        >>> from retain.models import make_model
        >>> learner = Learner(make_model("mlp", (4,), 3, hidden=(8,)), device="cpu")
        >>> learner.fit([[0.1, 0.2, 0.3, 0.4]] * 4, [0, 1, 2, 1]).experiences_seen_
        1
        >>> learner.fit(torch.full((2, 4), float("nan")), torch.tensor([0, 1]))
        Traceback (most recent call last):
        ...
        retain.quality.checks.BatchRefused: fit: experience 1: x holds NaN or infinite values
        """
        experience = self._as_experience(experience, y, t)
        self._check_experience(experience)
        return self._guarded(lambda: self._fit(experience, epochs, incoming))

    def _as_experience(self, data: Experience | Any, y: Any, t: Any) -> Experience:
        if isinstance(data, Experience):
            if y is not None or t is not None:
                raise TypeError("fit takes an Experience, or arrays x, y[, t]; not both")
            return data
        if y is None:
            raise TypeError("fit(x, y[, t]): give the labels y with the inputs x")
        report = check_batch(data, y, t, where=f"fit: experience {self.experiences_seen_}").raise_if_refused()
        assert report.y is not None and report.t is not None  # a batch that passed holds them
        x = torch.as_tensor(data)
        x = x.long() if self._takes_tokens() else x.float()  # token ids stay integers; pixels may come as uint8
        tasks = report.t
        scenario = next((k for k in SCENARIO_KINDS if all(k in s.scenarios for s in self.strategies)),
                        "class_incremental")
        return Experience(x, report.y, x[:0], report.y[:0], id=self.experiences_seen_, task=int(tasks[0]),
                          t_train=tasks, t_test=tasks[:0], scenario=scenario)

    def _check_experience(self, experience: Experience) -> None:
        """Refuse an experience the model cannot learn from, before anything changes."""
        if experience.n_train == 0:
            raise ValueError(f"experience {experience.id} has no training samples")
        for s in self.strategies:
            problem = scenario_problem(s, experience.scenario)
            if problem:
                raise ValueError(f"{problem} (experience {experience.id})")
        x = experience.x_train
        if not self._takes_tokens() and not x.dtype.is_floating_point:
            raise ValueError(f"fit: experience {experience.id}: x holds {x.dtype} values; this model reads floating "
                             "point inputs (x.float(), scaled as you want them)")
        check_batch(x if not self._takes_tokens() else torch.zeros(len(x), 1), experience.y_train,
                    experience.train_tasks(), n_features=self._n_features(), n_classes=self._label_limit(),
                    where=f"fit: experience {experience.id}").raise_if_refused()

    def readable(self, x: Any, where: str) -> Tensor:
        """``x`` as a tensor, if the model can read it (the shape it takes, finite numbers or token
        ids); otherwise :class:`BatchRefused` naming ``where`` and the problem.

        Args:
            x: inputs (tensor, numpy array or list).
            where: what the inputs are, for the message refusing them.

        Returns:
            The inputs as a tensor.

        Raises:
            BatchRefused: when the model cannot read them (a ``ValueError``).
        """
        return check_inputs(x, n_features=self._n_features(), tokens=self._takes_tokens(), where=where)

    def _n_features(self) -> int | None:
        """Values a row the model reads, when it says (token ids are not checked)."""
        return None if self._takes_tokens() else getattr(self.model.backbone, "in_features", None)

    def _n_outputs(self) -> int:
        """Output units of the model's head (every head has ``n_outputs``; nn.Module cannot declare it)."""
        return cast(int, self.model.head.n_outputs)

    def _takes_tokens(self) -> bool:
        return bool(getattr(self.model.backbone, "takes_tokens", False))

    def _label_limit(self) -> int | None:
        """How many classes the model can learn, or None when its head grows (or a strategy grows it)."""
        head = self.model.head
        while isinstance(inner := getattr(head, "inner", None), torch.nn.Module):  # a head wrapping another
            head = inner
        if not isinstance(head, LinearHead) or any(s.family == "architecture" for s in self.strategies):
            return None
        return head.n_outputs

    def _restore(self, saved: dict[str, Any]) -> None:
        super()._restore(saved)
        self._ddp = None

    def _fit(self, experience: Experience, epochs: int | None, incoming: bool) -> Learner:
        self._experience_id = experience.id
        ctx = ExperienceContext(experience)
        self._experience_hook("before_experience", ctx)
        self.optimizer = self._optimizer()
        self.model.train()
        source = ctx.train_set
        x, y, t = source
        # Shuffled rows are gathered (and moved to the device) CHUNK batches at a time, so a step
        # takes a view instead of paying for its own gather and copy.
        chunk = self.batch_size * CHUNK
        rank, world = self.ranks.shard
        # A closed-form method (SLDA) writes the model itself: no gradient steps then.
        epochs = 0 if any(s.closed_form for s in self.strategies) else (epochs or self.epochs)
        # the factor each step multiplies the learning rates by: lr_decay over the experience's steps
        decay = self.lr_decay ** (1 / max(1, epochs * -(-len(y) // self.batch_size) - 1))
        decayed = 0
        for epoch in range(epochs):
            fresh = incoming and epoch == 0
            order = torch.randperm(len(y), generator=self.generator)
            for first in range(0, len(y), chunk):
                idx = order[first:first + chunk]
                # Across ranks, a rank gathers its rows of the chunk only: those at positions rank,
                # rank + world, ...; each global batch's share is then one contiguous run of them.
                mine = idx[rank::world]
                xc, yc, tc = self._gather(mine, x, y, t)
                rows = mine.to(self.device)
                for start in range(0, len(idx), self.batch_size):
                    end = min(start + self.batch_size, len(idx))
                    if end - start < world:  # too few rows to give every rank one: skipped on all
                        continue
                    share = slice(-(-(start - rank) // world), -(-(end - rank) // world))
                    yb = yc[share]
                    self._step(Step(xc[share], yb, tc[share], len(yb), fresh, experience.id, rows[share], source,
                                    shard=(rank, world)))
                    if decay != 1:
                        scale_lr(self.optimizer, decay)
                        decayed += 1
        if decayed:  # online updates after the fit (partial_fit) step at lr again, as after a reload
            scale_lr(self.optimizer, decay ** -decayed)
        self._check_finite(experience)
        self._recalibrate_norms(x, t)
        self._remember(experience)
        self._experience_hook("after_experience", ctx)
        self.experiences_seen_ += 1
        return self

    @property
    def bulk_size(self) -> int:
        """Rows per batch of the no-gradient passes over a whole training set (BatchNorm
        re-estimation, the distillers' cached old outputs): eight batches, at least 256."""
        return max(self.batch_size * 8, 256)

    def _gather(self, idx: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The rows ``idx`` of each tensor, on the learner's device (``index_select``, not
        ``a[idx]``: the same rows, several times faster on the CPU)."""
        return tuple(a.index_select(0, idx.to(a.device)).to(self.device) for a in tensors)

    @torch.no_grad()
    def _recalibrate_norms(self, x: Tensor, t: Tensor) -> None:
        """Re-estimate BatchNorm statistics as plain averages over what the experience trained on
        (its training set and every strategy's memory). The running averages training leaves
        weight the last batches most, and with replay those are a poor sample of the mix: on the
        keyword stream (a CNN, replay-800, seed 0) the model scored 63-79% on the words experiences
        2-5 had just taught it, 84-93% once recalibrated. Models without BatchNorm are left as they are."""
        norms = [m for m in self.model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training]
        if not norms:
            return
        parts = [(x, t)] + [(m.x, m.t) for m in self.memories() if m.x.shape[1:] == x.shape[1:]]
        xs, ts = torch.cat([p[0].to(x.device) for p in parts]), torch.cat([p[1].to(t.device) for p in parts])
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        order = torch.randperm(len(xs), generator=self.generator)
        # Near-equal batches (sizes differ by at most one), as the cumulative average weighs batches alike.
        with self._own_rng() if self._stochastic else contextlib.nullcontext():
            for idx in torch.tensor_split(order, -(-len(order) // self.bulk_size)):
                if len(idx) > 1:  # one row has no batch variance
                    self.model(*self._gather(idx, xs, ts))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    def memories(self) -> list[Memory]:
        """The non-empty memories the strategies declare (``Strategy.memory``), in strategy order.

        Returns:
            The memories that hold samples.
        """
        return [m for m in (s.memory() for s in self.strategies) if m is not None and len(m)]

    def _optimizer(self) -> FusedSGD | torch.optim.Optimizer:
        params = list(self.model.parameters())
        self._trainable = self._requires_grad()
        self._stochastic = any(getattr(m, "random_in_training", False)
                               or (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
                               for m in self.model.modules())
        groups = [(params, self.lr)]
        if self.backbone_lr is not None:  # pretrained weights get backbone_lr; heads and LoRA adapters lr
            backbone = {id(p) for n, p in self.model.backbone.named_parameters() if "lora_" not in n}
            groups = [([p for p in params if id(p) in backbone], self.backbone_lr),
                      ([p for p in params if id(p) not in backbone], self.lr)]
        self._ddp = self._wrapped() if self.ranks.world > 1 else None
        if FusedSGD.fits(params):
            return FusedSGD(groups, self.momentum)
        return torch.optim.SGD([{"params": g, "lr": lr} for g, lr in groups], lr=self.lr, momentum=self.momentum)

    def _wrapped(self) -> torch.nn.Module:
        """The model in DistributedDataParallel: built with the optimizer (a grown head has new
        parameters); it starts from rank 0's weights and averages the gradients of every step."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else None
        # Per-task heads train one head a step: the others get no gradient, which DDP must be told.
        return DistributedDataParallel(self.model, device_ids=ids, gradient_as_bucket_view=True,
                                       find_unused_parameters=isinstance(self.model.head, MultiHead))

    def partial_fit(self, x: Tensor, y: Tensor, t: Tensor | int | None = None, steps: int = 1,
                    hybrid: bool = False) -> Learner:
        """One online update on an incoming mini-batch (size 1 and up): ``steps`` gradient steps
        with the strategies' per-step hooks. No task boundary is assumed: strategies that only
        learn at experience ends are refused unless ``hybrid`` (consolidations are then their
        experiences). A bad batch raises ``BatchRefused`` (a ``ValueError`` carrying the quality
        report, ``retain.quality.check_batch``) before anything changes.

        Args:
            x: the batch's inputs.
            y: its labels, one class id per row.
            t: its task ids (one per row, or one for all); None: task 0.
            steps: gradient steps on the batch, at least 1.
            hybrid: whether consolidations follow (then strategies that learn at experience ends are allowed).

        Returns:
            The learner itself.

        Raises:
            ValueError: when the batch is refused, ``steps`` is not a positive integer, the learner trains
                across ranks, or a strategy cannot learn online.
            Diverged: when a step's loss is not finite (that step changed no weight).

        >>> from retain.models import make_model
        >>> learner = Learner(make_model("mlp", (4,), 3, hidden=(8,)), device="cpu")
        >>> learner.partial_fit(torch.rand(1, 4), torch.tensor([2])).samples_seen_
        1
        >>> learner.partial_fit(torch.rand(2, 4), torch.tensor([0, 3]))
        Traceback (most recent call last):
        ...
        retain.quality.checks.BatchRefused: partial_fit: label 3 is outside the model's classes 0..2
        """
        head = self.model.head
        report = check_batch(x, y, t, n_features=getattr(self.model.backbone, "in_features", None),
                             n_classes=None if isinstance(head, IncrementalHead) else self._n_outputs(),
                             known_classes=self.seen_classes_, where="partial_fit").raise_if_refused()
        assert report.x is not None and report.y is not None and report.t is not None  # a batch that passed holds them
        x, y, t = report.x.to(self.device), report.y.to(self.device), report.t.to(self.device)
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"partial_fit: steps must be an integer >= 1, got {steps!r}")
        if self.ranks.world > 1:
            raise ValueError("partial_fit: online updates run in one process, not across ranks")
        for s in self.strategies:
            problem = None if hybrid else online_problem(s)
            if problem:
                raise ValueError(f"partial_fit: {problem}")
        if self.optimizer is None:
            self.optimizer = self._optimizer()
        if not self.model.training:
            self.model.train()
        try:
            for k in range(steps):  # these rows come from no training set: no rows, no source
                self._step(Step(x, y, t, len(y), k == 0, self._experience_id))
        except Diverged as err:
            raise Diverged(f"partial_fit: {err}; the diverging step changed no weight (earlier steps of this call "
                           "stay, and a stream memory may already hold the batch)") from None
        self.samples_seen_ += len(y)
        if report.new_classes:
            self.seen_classes_ = sorted(set(self.seen_classes_) | set(report.new_classes))
        return self

    def _step(self, step: Step) -> None:
        if self._stochastic:
            with self._own_rng():
                self._train_step(step)
        else:
            self._train_step(step)

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Torch's global CPU RNG in the state this learner left it (see ``_torch_rng``). Models
        without random layers skip this: getting and setting the state costs about 2% of an MLP step."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._torch_rng)
            try:
                yield
            finally:
                self._torch_rng = torch.get_rng_state()

    def _logits(self, step: Step) -> Tensor:
        logits: Tensor = (self._ddp or self.model)(step.x, step.t)
        return logits

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        """Run a block (e.g. initialising a new head) on torch's global RNG seeded from the
        learner's own generator, so a saved and reloaded learner grows identically.

        Yields:
            Nothing: the block runs with the seeded RNG, restored after it.
        """
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    def _remember(self, exp: Experience) -> None:
        self.seen_classes_ = sorted(set(self.seen_classes_) | set(exp.classes))
        known = set(self.task_classes_.get(exp.task, []))
        self.task_classes_[exp.task] = sorted(known | set(exp.classes))

    # -- inference --------------------------------------------------------------------
    @torch.no_grad()
    def predict_logits(self, x: Tensor, t: Tensor | int | None = None, batch_size: int = 1024,
                       where: str = "predict") -> Tensor:
        """Logits over the global classes; ``t`` (task ids) is needed with per-task heads. ``x``
        may be a tensor, numpy array or list; a batch of the wrong shape or with NaN is refused.

        Args:
            x: the inputs.
            t: their task ids (one per row, or one for all); None: task 0 (refused with per-task heads
                unless the backbone routes tasks itself).
            batch_size: rows per forward pass.
            where: what the inputs are, for the message refusing them.

        Returns:
            Logits ``(N, n_outputs)`` on the CPU, in evaluation mode.

        Raises:
            ValueError: when the inputs are refused, or per-task heads get no task ids.
        """
        x = self.readable(x, where=where)
        if isinstance(self.model.head, MultiHead) and t is None and not getattr(self.model.backbone, "routes_tasks",
                                                                                 False):
            raise ValueError("this model has per-task heads: pass the task id(s) t to predict")
        if t is None or isinstance(t, int):
            t = torch.full((len(x),), 0 if t is None else t, dtype=torch.long)
        if not len(x):
            return torch.empty(0, self._n_outputs())
        with evaluating(self.model):  # batches cut as the backbone's frozen features are
            return in_batches(self.model, self.model.backbone, x, batch_size, self.device, t)

    @torch.no_grad()
    def features(self, x: Tensor, t: Tensor | None = None, batch_size: int = 1024) -> Tensor:
        """Backbone features of ``x`` in evaluation mode (on the CPU).

        Args:
            x: the inputs.
            t: their task ids; None: none passed (backbones that do not read them).
            batch_size: rows per forward pass.

        Returns:
            Features ``(N, features)``.
        """
        with evaluating(self.model):
            return in_batches(self.model.features, self.model.backbone, x, batch_size, self.device, t)

    def predict(self, x: Tensor, t: Tensor | int | None = None, where: str = "predict") -> Tensor:
        """Predicted class ids (``-1`` while the model has no output unit yet); ``where`` names the
        inputs in the message refusing them.

        Args:
            x: the inputs (tensor, numpy array or list).
            t: their task ids (one per row, or one for all); None: task 0.
            where: what the inputs are, for the message refusing them.

        Returns:
            One class id per row (int64).

        Raises:
            ValueError: when the inputs are refused, or per-task heads get no task ids.
        """
        logits = self.predict_logits(x, t, where=where)
        if logits.shape[1] == 0:
            return torch.full((len(x),), -1, dtype=torch.long)
        return logits.argmax(1)

    def predict_proba(self, x: Tensor, t: Tensor | int | None = None, where: str = "predict") -> Tensor:
        """Class probabilities: the softmax of :meth:`predict_logits`.

        Args:
            x: the inputs (tensor, numpy array or list).
            t: their task ids (one per row, or one for all); None: task 0.
            where: what the inputs are, for the message refusing them.

        Returns:
            Probabilities ``(N, n_outputs)``, each row summing to 1.

        Raises:
            ValueError: when the inputs are refused, or per-task heads get no task ids.
        """
        return self.predict_logits(x, t, where=where).softmax(1)

    def score(self, experience: Experience) -> float:
        """Accuracy on the experience's test split.

        Args:
            experience: the experience whose test split is scored.

        Returns:
            The share of test samples predicted right, 0-1.

        Raises:
            ValueError: when the experience has no test samples.
        """
        if experience.n_test == 0:
            raise ValueError(f"experience {experience.id} has no test samples")
        pred = self.predict(experience.x_test, experience.test_tasks())
        return float((pred == experience.y_test).float().mean())

    def evaluate(self, experiences: Iterable[Experience]) -> list[float]:
        """Accuracy on every experience's test split: one row of the accuracy matrix.

        Args:
            experiences: the experiences to score, e.g. a whole stream.

        Returns:
            One accuracy per experience, 0-1.
        """
        return [self.score(e) for e in experiences]

    # -- persistence ------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the learner (model, strategy state, counters, random state) to ``directory``,
        atomically and with checksums (``retain.engine.persist``): a crash mid-save leaves the
        folder holding the previous save, whole. Across ranks, rank 0 writes (every rank holds the
        same learner) and the others wait for it.

        Args:
            directory: the folder to save to (created if missing; an earlier save there is replaced).

        Returns:
            The folder.

        Raises:
            ValueError: when the save could not be loaded back (a setting over the bounds a load checks).
        """
        if self.ranks.world > 1 and self.ranks.rank != 0:
            distributed.barrier()
            return Path(directory)
        tensors: dict[str, Tensor] = {"learner.rng": self.generator.get_state(), "learner.torch_rng": self._torch_rng}
        strategies = persist.strategies_to_save(self.strategies, tensors)
        meta = {
            "format": persist.FORMAT_VERSION,
            "model": self.model.get_config(),
            "learner": {"lr": self.lr, "momentum": self.momentum, "batch_size": self.batch_size,
                        "epochs": self.epochs, "seed": self.seed, "backbone_lr": self.backbone_lr,
                        "lr_decay": self.lr_decay},
            "strategies": strategies,
            "seen_classes": self.seen_classes_,
            "task_classes": {str(k): v for k, v in self.task_classes_.items()},
            "class_names": self.class_names_,
            "experiences_seen": self.experiences_seen_,
            "steps": self.steps_,
            "samples_seen": self.samples_seen_,
            "experience_id": self._experience_id,
        }
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        parts = {"model": safetensors_bytes(weights),
                 "state": safetensors_bytes(tensors, metadata=persist.state_metadata(self.strategies)),
                 "learner": json.dumps(meta, indent=1).encode()}
        try:  # a save that could not load again (a setting over persist's bounds) is never written
            persist.saved_learner(parts["learner"], Path(directory))
        except persist.LoadError as err:
            raise ValueError(f"cannot save to {directory}: it could not be loaded back ({err})") from None
        path = persist.write_generation(directory, parts, {"model": "safetensors", "state": "safetensors",
                                                           "learner": "json"}, kind="classifier")
        if self.ranks.world > 1:
            distributed.barrier()
        return path

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> Learner:
        """Rebuild a learner saved by :meth:`save`; training continues exactly where it stopped.
        Every file is checked against its checksum and the JSON against a schema with bounds
        before anything is built from it; a problem raises ``persist.LoadError`` naming the file.

        Args:
            directory: the folder :meth:`save` wrote.
            device: where the learner trains: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

        Returns:
            The learner, as it was saved.

        Raises:
            persist.LoadError: when a file is missing, damaged or does not fit the others.
        """
        path = Path(directory)
        parts = persist.read_generation(path, "classifier").parts
        meta = persist.saved_learner(parts["learner"], path)
        strategies = persist.make_strategies(meta.strategies, path)
        weights = persist.read_tensors(parts["model"], path, "model")
        model = persist.build_model(meta.model, weights, path)
        learner = cls(model, strategies, device=device, **meta.learner.model_dump())
        tensors = persist.read_tensors(parts["state"], path, "state")
        persist.set_generator(learner.generator, tensors, path)
        if "learner.torch_rng" in tensors:  # saves of the first format have none
            learner._torch_rng = tensors["learner.torch_rng"]
        order = persist.state_names(parts["state"], path)
        persist.load_states(strategies, meta.strategies, tensors, learner, path, order)
        persist.check_memories(strategies, learner, path)
        learner.seen_classes_, learner.class_names_ = meta.seen_classes, meta.class_names
        learner.task_classes_ = {int(k): v for k, v in meta.task_classes.items()}
        learner.experiences_seen_, learner.steps_ = meta.experiences_seen, meta.steps
        learner.samples_seen_, learner._experience_id = meta.samples_seen, meta.experience_id
        return learner
