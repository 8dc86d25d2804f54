"""What a task kind brings to the loop, and nothing else: its config, its rows, its learner, its score.

The loop (:class:`retain.loop.Project`), the service and the tuner are written once; a kind fills
in what differs between, say, classification (rows are inputs with a label, scored by accuracy)
and translation (rows are source/target pairs, scored by chrF++). A kind is found by existing: a
subclass of :class:`TaskKind` with a ``name`` in a module of this package is registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import torch
from torch import Tensor

from retain.quality import GateReport
from retain.store import ModelStore
from retain.strategies import STRATEGIES

if TYPE_CHECKING:
    from pydantic import BaseModel

Config = TypeVar("Config", bound="BaseModel")


def only_tunable_changed(tuned: list[dict[str, Any]], current: list[dict[str, Any]]) -> None:
    """Refuse a tuned composition that changes more than its strategies' declared-tunable knobs:
    the store's versions learned with the rest (a memory's size, say)."""
    for part, mine in zip(tuned, current, strict=False):
        fixed = sorted(k for k in part if k != "name" and part[k] != mine.get(k)
                       and k not in STRATEGIES[part["name"]].tunable)
        if part["name"] != mine["name"] or fixed:
            raise ValueError(f"{part['name']}.{', '.join(fixed) or 'name'}: the store's versions learned with "
                             "the current value; only declared-tunable knobs can change in a deployment")


def strings_tensors(key: str, texts: list[str]) -> dict[str, Tensor]:
    """``texts`` as a store keeps them: their UTF-8 bytes end to end (``key``) and each one's length
    (``key_len``); :func:`strings_of` reads them back.

    >>> strings_of(strings_tensors("t", ["Grüße", ""]), "t")
    ['Grüße', '']
    """
    encoded = [s.encode() for s in texts]
    return {key: torch.tensor(list(b"".join(encoded)), dtype=torch.uint8),
            f"{key}_len": torch.tensor([len(b) for b in encoded], dtype=torch.long)}


def strings_of(tensors: dict[str, Tensor], key: str) -> list[str]:
    """The strings :func:`strings_tensors` kept under ``key``."""
    data, ends = bytes(tensors[key].tolist()), tensors[f"{key}_len"].cumsum(0).tolist()
    return [data[a:b].decode() for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def validated(config_type: type[Config], raw: Any, where: str) -> Config:
    """``raw`` (a config's YAML mapping) as a ``config_type``; a bad value is refused naming its field and
    ``where`` the config came from."""
    from pydantic import ValidationError

    from retain.config import ConfigError, format_errors

    try:
        return config_type.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"invalid config {where}:\n{format_errors(err)}") from None


class TooFewRows(ValueError):
    """A batch with too few rows to hold some out and train on the rest; the message says what to send."""


class Rows(Protocol):
    """A batch of a kind's rows: sized, sliced by row indices, kept in a store as tensors."""

    def __len__(self) -> int: ...

    def take(self, index: Tensor) -> Rows:
        """The rows at ``index``.

        Args:
            index: row indices (a 1-d long tensor), in the order wanted.

        Returns:
            Rows of the same kind.
        """

    def tensors(self) -> dict[str, Tensor]:
        """The rows as a store keeps them.

        Returns:
            Named tensors; the kind's ``rows_of`` reads them back.
        """

    def hashes(self) -> list[str]:
        """A content hash of each row, to find repeats (the gate's duplicates).

        Returns:
            One hex digest a row.
        """

    def content(self) -> tuple[Tensor, ...]:
        """What a batch's hash is taken over.

        Returns:
            The tensors that identify the batch.
        """


R = TypeVar("R", bound=Rows)  # a kind's own rows: Examples, Pairs, ...


@dataclass
class Prediction:
    """One row's prediction: where it came from, the answer (a label, a translation) and, for
    labels, the likeliest ones with their probabilities.

    Attributes:
        row: where the row came from: a table's row, a file, or its number among the inputs.
        label: the answer: a label name, a translation, a transcript, a detector's boxes as JSON.
        top: for labels, the likeliest names with their probabilities (0-1), likeliest first; else empty.
    """

    row: str
    label: str
    top: list[tuple[str, float]]


class TaskKind(Generic[R]):
    """One kind of task. Subclasses set the class attributes and implement the methods below;
    ``config`` is the validated run config the store keeps.

    The type parameter is the kind's rows (a :class:`Rows`): a classifier's ``Examples``, a
    translation's ``Pairs``.

    Args:
        store: the model store the kind works on.
        run: the run config the store keeps, validated into ``config`` (errors name the field).
    """

    name: ClassVar[str]
    metric: ClassVar[str]  # what a version is scored by, on a 0-1 scale, higher is better
    labels: ClassVar[str]  # what a row's answer is called in messages and tables: "class", "direction"
    config_type: ClassVar[type[BaseModel]]  # the validated run config
    too_few: ClassVar[str]  # why a batch may be too small to hold rows out
    writes_answers: ClassVar[bool] = False  # the model writes its answers (a translation), not picks a label
    # what `retain predict` reads: the kind's batch files ("files": a table, a folder) or, for translation,
    # JSON Lines of sources with their languages ("sources")
    predicts_from: ClassVar[str] = "files"
    answer_field: ClassVar[str] = "label"  # what the service's feedback sends: a label, or (detection) boxes
    row_metric: ClassVar[str | None] = None  # what a row's score is, when not the metric itself (a detector's box F1)

    def __init__(self, store: ModelStore, run: dict[str, Any]) -> None:
        self.store = store
        self.config = self.validate(run)

    # -- config ---------------------------------------------------------------------------
    @classmethod
    def for_store(cls, config: Any) -> Any:
        """``config`` as a new store keeps it.

        Args:
            config: the validated run config given to ``retain init``.

        Returns:
            The config the store keeps (a classifier's head set to grow, when the config leaves it unset).
        """
        return config

    @classmethod
    def validate(cls, run: dict[str, Any]) -> Any:
        """The kind's run config from the dictionary a store keeps (errors name the field).

        Args:
            run: the run config as the store keeps it (JSON values).

        Returns:
            The validated config (the kind's ``config_type``).
        """
        raise NotImplementedError

    @classmethod
    def read_config(cls, path: str | Path) -> Any:
        """The kind's config from the YAML file at ``path`` (``retain init --config``; errors name the field).

        Args:
            path: the YAML config file.

        Returns:
            The validated config (the kind's ``config_type``).
        """
        raise NotImplementedError

    def retuned(self, best: Any) -> dict[str, Any]:
        """The store's run config with ``best``'s (a tuned config) training settings and declared-
        tunable strategy knobs; anything else changed is refused: the versions learned with it.

        Args:
            best: the tuned config of the store's kind (``retain tune``'s best).

        Returns:
            The run config to keep, as JSON values.

        Raises:
            ValueError: ``best`` changes more than the training settings and declared-tunable knobs.
        """
        raise NotImplementedError

    def knobs(self) -> dict[str, Any]:
        """The training knobs the store's config sets now (a learner loaded from an older version
        takes them: the config may have been retuned since).

        Returns:
            Each knob's value by name (``lr``, ``epochs``, ``batch_size``, ...).
        """
        raise NotImplementedError

    @property
    def rule(self) -> Any:
        """The :class:`~retain.store.PromotionRule` of the store's config."""
        return self.config.promotion

    @property
    def gate_policy(self) -> Any:
        """The :class:`~retain.quality.GatePolicy` of the store's config."""
        return self.config.gate

    # -- rows -----------------------------------------------------------------------------
    def read(self, data: Path, labelled: bool = True) -> R:
        """The rows of a batch file or folder, refused with a message naming it when they cannot be read.

        Args:
            data: the batch file or folder.
            labelled: whether the rows must carry their answers (False: to predict from).

        Returns:
            The rows.
        """
        raise NotImplementedError

    def read_batch(self, data: Path, first: bool) -> tuple[R, list[str]]:
        """A batch file's rows and the answer names they use (a classifier's label names: the
        store's, then the batch's new ones).

        Args:
            data: the batch file or folder.
            first: whether it is the store's first batch.

        Returns:
            The rows, and the answer names they use (empty for kinds that name none).
        """
        return self.read(data), []

    def check(self, rows: R, names: list[str], where: str) -> None:
        """Refuse rows no model could learn from (raises with a message naming ``where``).

        Args:
            rows: the batch's rows.
            names: the answer names they use (:meth:`read_batch`'s).
            where: what the rows came from, named in the message.

        Raises:
            ValueError: the rows cannot be learned from.
        """

    def prepare(self, rows: R, progress: bool = False) -> R:
        """Checked rows as the model reads them (a frozen backbone's features, say).

        Args:
            rows: checked rows.
            progress: show a progress bar while encoding.

        Returns:
            The rows as the model reads them.
        """
        return rows

    def relabel(self, rows: R, names: list[str]) -> tuple[R, list[str]]:
        """``rows`` and ``names`` as the store names answers now, under the writer lock (a classifier's
        new label ids, given when the batch was read, may have gone to another update's names).

        Args:
            rows: the batch's rows.
            names: the answer names given when the batch was read.

        Returns:
            The rows and names with the store's ids.
        """
        return rows, names

    def as_came(self, data: Path, rows: R, names: list[str]) -> list[dict[str, Any]]:
        """Each of ``rows`` as the user sent it, for review (a table's record, the file, the pair).

        Args:
            data: the batch file or folder the rows came from.
            rows: the rows.
            names: the answer names they use.

        Returns:
            One JSON-able mapping a row.
        """
        return [{} for _ in range(len(rows))]

    def recorded_labels(self, names: list[str]) -> list[str] | None:
        """The label names a new version records in the transaction that records it (None: none).

        Args:
            names: the answer names of the update.

        Returns:
            The names to record, or None.
        """
        return None

    def join(self, parts: list[R]) -> R:
        """Rows of several batches as one (a kept batch's rows carried into the next update).

        Args:
            parts: the batches' rows, in order.

        Returns:
            Their rows, one after another.
        """
        raise NotImplementedError

    def rows_of(self, tensors: dict[str, Tensor]) -> R:
        """Rows kept with :meth:`Rows.tensors` read back.

        Args:
            tensors: what :meth:`Rows.tensors` gave.

        Returns:
            The rows.
        """
        raise NotImplementedError

    def held_rows(self, name: str) -> R:
        """A batch's held-out rows, as the store keeps them.

        Args:
            name: the batch's name in the store (``batch-0000``).

        Returns:
            Its held-out rows.
        """
        return self.rows_of(self.store.get_data(name))

    def answers(self, rows: R, names: list[str], learner: Any) -> list[str]:
        """The answers (label names, directions) ``rows`` bring that the store has not learned.

        Args:
            rows: the batch's rows.
            names: the store's label names and the batch's new ones.
            learner: the promoted version's learner (None before the first).

        Returns:
            The new answers' names.
        """
        return []

    def label_names(self, learner: Any) -> list[str]:
        """The answers ``learner`` knows, by name (a classifier's class names, directions).

        Args:
            learner: a version's learner.

        Returns:
            The names, by id.
        """
        raise NotImplementedError

    def split(self, rows: R, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
        """Row indices to train on and to hold out.

        Args:
            rows: the batch's rows.
            fraction: the share to hold out, 0-1.
            seed: the seed of the draw.

        Returns:
            The indices to train on and those to hold out.

        Raises:
            TooFewRows: the rows cannot be split so that both sides can be judged.
        """
        raise NotImplementedError

    def learnable(self, rows: R, fraction: float) -> Tensor:
        """The indices of ``rows`` an update can take now (the service leaves the others queued).

        Args:
            rows: the queued rows.
            fraction: the share an update holds out, 0-1.

        Returns:
            Row indices (a 1-d long tensor); every row by default.
        """
        return torch.arange(len(rows))

    # -- learning -------------------------------------------------------------------------
    def new_learner(self, rows: R, names: list[str], seed: int) -> Any:
        """The first version's learner, built from the config's first method.

        Args:
            rows: the first batch's training rows.
            names: the answer names they use.
            seed: the seed the learner starts from.

        Returns:
            An untrained learner.
        """
        raise NotImplementedError

    def readable(self, learner: Any, rows: R, where: str) -> R:
        """``rows`` as ``learner`` reads them (refused naming ``where`` when it cannot).

        Args:
            learner: the learner to read them.
            rows: the rows.
            where: what the rows came from, named in the message.

        Returns:
            The rows, in the form the learner takes.
        """
        return rows

    def fit(self, learner: Any, train: R, held: R, index: int, names: list[str], progress: bool = False) -> None:
        """Train ``learner`` on the ``index``-th batch's training rows.

        Args:
            learner: the learner, trained in place.
            train: the rows to train on.
            held: the batch's held-out rows (never trained on).
            index: the batch's number in the store (its experience id).
            names: the answer names the rows use.
            progress: show a progress bar.
        """
        raise NotImplementedError

    def retune(self, learner: Any) -> Any:
        """``learner`` with the store's current knobs.

        Args:
            learner: a version's learner.

        Returns:
            The learner with :meth:`knobs` set.
        """
        return learner

    # -- judging --------------------------------------------------------------------------
    def inspect(self, rows: R, current: Any, held: dict[str, R], known: set[str], seed: int) -> GateReport:
        """The data-quality gate's look at a batch.

        Args:
            rows: the batch's rows.
            current: the promoted version's learner (None before the first).
            held: the held-out rows of the batches the promoted version learned, by batch.
            known: hashes of rows already held.
            seed: the seed of the checks' draws.

        Returns:
            What the gate found and decided.
        """
        raise NotImplementedError

    def scores(self, learner: Any, held: dict[str, R]) -> dict[str, float]:
        """The metric on each batch's held-out rows, keyed by what the promotion rule compares
        (a batch name; for translation a batch and direction).

        Args:
            learner: the learner to score.
            held: held-out rows by batch.

        Returns:
            The metric (0-1) by key.
        """
        raise NotImplementedError

    def row_scores(self, learner: Any, held: dict[str, R]) -> dict[str, Tensor]:
        """Each row's score under the keys of :meth:`scores` (a paired bootstrap bounds a drop with them).

        Args:
            learner: the learner to score.
            held: held-out rows by batch.

        Returns:
            A score a row (0-1) by key.
        """
        raise NotImplementedError

    def parent_scores(self, learner: Any, held: dict[str, R], recorded: dict[str, float]) -> dict[str, float]:
        """The promoted version's scores on ``held``.

        Args:
            learner: the promoted version's learner.
            held: held-out rows by batch.
            recorded: the scores its version recorded.

        Returns:
            The metric (0-1) by key, as :meth:`scores`.
        """
        return self.scores(learner, held)

    def per_answer(self, learner: Any, held: dict[str, R]) -> dict[str, float]:
        """The metric by answer (class, direction) over every held-out row.

        Args:
            learner: the learner to score.
            held: held-out rows by batch.

        Returns:
            The metric (0-1) by answer name.
        """
        raise NotImplementedError

    def new_keys(self, scores: dict[str, float], batch: str) -> list[str]:
        """The keys of ``scores`` that belong to the new ``batch``.

        Args:
            scores: scores keyed as :meth:`scores` keys them.
            batch: the new batch's name.

        Returns:
            Its keys.
        """
        return [k for k in scores if k == batch or k.startswith(f"{batch} ")]

    # -- answering ------------------------------------------------------------------------
    def predict(self, learner: Any, data: Any, top_k: int, progress: bool = False) -> list[Prediction]:
        """What ``learner`` answers for ``data`` (a file or folder, or inputs as they are).

        Args:
            learner: a version's learner.
            data: a file or folder, or inputs as they are (rows, a tensor).
            top_k: how many likeliest labels a row lists (labels only).
            progress: show a progress bar.

        Returns:
            One prediction a row.
        """
        raise NotImplementedError

    # -- the service (kinds that write answers; a classifier's requests are read by retain.service.inputs) --
    def request_rows(self, inputs: list[dict[str, Any]], where: str) -> R:
        """The rows of the service's JSON inputs (each ``{field: value}``).

        Args:
            inputs: the request's inputs.
            where: the request's field, named in an error (``inputs``).

        Returns:
            The rows.

        Raises:
            InputError: an input is bad; it names it.
        """
        raise NotImplementedError

    def warm_rows(self) -> R:
        """One input the service answers before it says it is ready.

        Returns:
            One row.
        """
        raise NotImplementedError

    def with_answers(self, rows: R, answers: list[str]) -> tuple[R, list[str]]:
        """``rows`` with ``answers`` as what they should have been answered (feedback), and the answer names
        they use (a detector's class names: the store's, then new ones; none for written answers).

        Args:
            rows: the rows feedback answers.
            answers: one answer a row, as feedback sent it.

        Returns:
            The labelled rows and the answer names they use.
        """
        raise NotImplementedError

    def answer_problem(self, rows: R, index: int, answer: str) -> str | None:
        """Why feedback's ``answer`` to row ``index`` of ``rows`` cannot be learned (a detector's boxes: not a list
        of boxes, more than the model takes, a box outside its image), or None.

        Args:
            rows: the rows feedback answers.
            index: the row's index.
            answer: the answer feedback sent.

        Returns:
            The problem, or None.
        """
        return None

    def answer_names(self, rows: R, answers: list[str]) -> list[str]:
        """The answers feedback brings, by name, to tell which are new (a classifier's labels, a translation's
        directions, a detector's box classes).

        Args:
            rows: the rows feedback answers.
            answers: one answer a row, as feedback sent it.

        Returns:
            The answer names.
        """
        return self.answer_groups(rows)

    def shown(self, answer: str) -> dict[str, Any]:
        """A prediction's answer as the service returns it (a detector's boxes as a list, not as JSON text).

        Args:
            answer: a prediction's answer (:attr:`Prediction.label`).

        Returns:
            The fields of the service's answer.
        """
        return {"label": answer}

    def answer_groups(self, rows: R) -> list[str]:
        """What each row's answer is counted under (a translation's direction): predictions and feedback
        are counted by it, and a group no version learned yet is reported new.

        Args:
            rows: the rows.

        Returns:
            One group a row.
        """
        return [self.labels] * len(rows)

    def answer_score(self, answer: str, label: str) -> float:
        """How right ``answer`` was, given the ``label`` feedback sent (0 to 1): the live score of
        predictions and of a candidate in shadow. A class is right or wrong.

        Args:
            answer: what the model answered.
            label: what feedback says it should have answered.

        Returns:
            The score, 0-1.
        """
        return float(answer == label)

    def answer_fields(self, rows: R, index: int) -> dict[str, Any]:
        """What the service returns beside row ``index``'s answer (a translation's language).

        Args:
            rows: the rows answered.
            index: the row's index.

        Returns:
            Extra fields of the row's answer (none by default).
        """
        return {}

    def evaluate(self, learner: Any, data: Path, version: int, progress: bool = False) -> dict[str, Any]:
        """The metric of ``learner`` on labelled ``data``: overall and by answer.

        Args:
            learner: a version's learner.
            data: a labelled batch file or folder.
            version: the version's number, recorded in the result.
            progress: show a progress bar.

        Returns:
            The version, the rows, the metric overall and by answer (JSON values).
        """
        raise NotImplementedError


class WrittenAnswers(TaskKind[R]):
    """A kind whose model writes its answers (translation, transcription): judged by a score in points
    (``max_drop``, ``confidence``, ``kept`` in its config), trained by a generative learner whose knobs
    are attributes, and tuned in its first method's strategies and training settings only."""

    writes_answers = True
    model_kept: ClassVar[str]  # why a store's model config cannot be retuned
    rows_called: ClassVar[str] = "rows"  # what a batch's rows are, in messages: clips, images
    training_tuned: ClassVar[bool] = True  # a tuned config's training section applies (else its method's lr)

    @classmethod
    def validate(cls, run: dict[str, Any]) -> Any:
        return validated(cls.config_type, run, "in the store")

    @classmethod
    def read_config(cls, path: str | Path) -> Any:
        from retain.config import read_yaml

        return validated(cls.config_type, read_yaml(path), str(path))

    def knobs(self) -> dict[str, Any]:
        t = self.config.training
        return {"lr": t.lr, "epochs": t.epochs, "batch_size": t.batch_size}

    @property
    def rule(self) -> Any:
        from retain.store.promotion import PromotionRule

        # each batch (direction) holds out enough rows to judge by itself (split refuses fewer); judging a
        # new batch's gain would score its rows with the parent as well
        return PromotionRule(max_drop=self.config.max_drop / 100, confidence=self.config.confidence, min_held_out=1,
                             gain_weight=0.0, kept=self.config.kept)

    def split(self, rows: R, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
        """A seeded share ``fraction`` of the rows held out; refused when fewer than ``min_held_out``."""
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
        n, called = round(fraction * len(rows)), self.rows_called
        if n < self.config.min_held_out or n >= len(rows):
            raise TooFewRows(f"{n} of the batch's {len(rows)} {called} would be held out, min_held_out is "
                             f"{self.config.min_held_out}: send more {called} at once (a new store: hold out more "
                             "with --held-out, or set min_held_out in its config)")
        return order[n:].sort().values, order[:n].sort().values

    def learnable(self, rows: R, fraction: float) -> Tensor:
        """Every row once enough of them are queued to hold ``min_held_out`` out, else none."""
        enough = round(fraction * len(rows)) >= self.config.min_held_out
        return torch.arange(len(rows)) if enough else torch.zeros(0, dtype=torch.long)

    def retuned(self, best: Any) -> dict[str, Any]:
        if best.model != self.config.model:
            raise ValueError(f"model: {self.model_kept} ({self.config.model.model_dump()})")
        mine, tuned = self.config.methods[0], best.methods[0]
        if len(tuned.compose) != len(mine.compose):
            raise ValueError(f"compose: the store's versions learned with {[p['name'] for p in mine.compose]}; "
                             "only declared-tunable knobs can change in a deployment")
        only_tunable_changed(tuned.compose, mine.compose)
        run: dict[str, Any] = self.config.model_dump(mode="json")
        run["methods"][0] = tuned.model_dump(mode="json") | {"label": mine.label}
        if self.training_tuned:
            run["training"] = best.training.model_dump(mode="json")
        return run

    def retune(self, learner: Any) -> Any:
        for knob, value in self.knobs().items():
            setattr(learner, knob, value)
        return learner

    # -- tuning a store (retain.tuning.answers: the kinds that write their answers) ---------------
    def tuning_share(self, rows: R, percent: int, salt: str) -> Tensor:
        """A mask of about ``percent``% of ``rows``, drawn by a hash salted with ``salt`` (another salt
        draws another share): ``retain tune STORE`` cuts each batch's held-out rows by it."""
        raise NotImplementedError

    def tuning_values(self) -> dict[str, Any]:
        """What ``retain tune STORE`` searches, by key, with the config's value of each: the learning
        rate (``training.lr``), the LoRA rank (``model.lora_rank``) when the model has adapters, and
        the first method's declared-tunable strategy knobs (``replay.ratio``, ...)."""
        raise NotImplementedError

    def tuned(self, values: dict[str, Any]) -> Any:
        """The config with a trial's ``values`` (keys of :meth:`tuning_values`) set, its first method alone."""
        raise NotImplementedError

    def score_rows(self, learner: Any, rows: R) -> float:
        """The metric of ``learner`` on ``rows`` taken together (0-1)."""
        return self.scores(learner, {"rows": rows})["rows"]

    @staticmethod
    def strategy_values(compose: list[dict[str, Any]]) -> dict[str, Any]:
        """The declared-tunable knobs of a method's strategies (``strategy.knob``), each with the value
        ``compose`` gives it or the strategy's default.

        >>> WrittenAnswers.strategy_values([{"name": "replay", "memory_size": 10, "ratio": 2.0}])
        {'replay.ratio': 2.0, 'replay.weight': 2.0}
        """
        return {f"{part['name']}.{knob}": part.get(knob, getattr(STRATEGIES[part["name"]], knob, None))
                for part in compose for knob in STRATEGIES[part["name"]].tunable}

    @staticmethod
    def with_strategy_values(compose: list[dict[str, Any]], values: dict[str, Any]) -> list[dict[str, Any]]:
        """``compose`` with the ``strategy.knob`` entries of ``values`` set (the others, ``training.lr``
        say, are the kind's to place).

        >>> WrittenAnswers.with_strategy_values([{"name": "replay"}], {"replay.ratio": 0.5, "training.lr": 0.1})
        [{'name': 'replay', 'ratio': 0.5}]
        """
        out = [dict(part) for part in compose]
        for key, value in values.items():
            owner, name = key.split(".", 1)
            part = next((p for p in out if p["name"] == owner), None)
            if part is not None:
                part[name] = value
        return out

    @staticmethod
    def hashed_share(keys: list[str], percent: int, salt: str) -> Tensor:
        """A mask of about ``percent``% of ``keys``, drawn by a hash of each salted with ``salt``: the
        same key always falls on the same side.

        >>> share = WrittenAnswers.hashed_share([str(i) for i in range(1000)], 30, "tune-test")
        >>> int(share.sum()), bool(share[7]) == bool(WrittenAnswers.hashed_share(["7"], 30, "tune-test")[0])
        (310, True)
        """
        import hashlib

        return torch.tensor([int(hashlib.sha256(f"{salt}\0{key}".encode()).hexdigest()[:8], 16) % 100 < percent
                             for key in keys], dtype=torch.bool)
