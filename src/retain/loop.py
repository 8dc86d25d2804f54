"""The loop on a model store: init, then receive a batch -> check it -> update -> evaluate on old and
new held-out data -> promote or keep the candidate; predict with the promoted version; roll back.

A :class:`Project` is the Python face of ``retain init / update / predict / versions / rollback``,
for every task kind (:mod:`retain.tasks`: classification, translation). Each batch of the user's
files is split into rows to train on and held-out rows (kept in the store), so every later version
is judged on every batch seen so far, by the kind's metric, with the promotion rule of the config.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retain.data.files import LabelMap
from retain.metrics.bootstrap import drop_bound
from retain.quality import GateReport
from retain.store import Batch, ModelStore, StoreError, Version
from retain.tasks import Prediction, Rows, kind_of_config, open_kind
from retain.tasks.base import TooFewRows
from retain.tasks.classification import Examples, top_labels
from retain.util import slug

__all__ = ["Prediction", "Project", "UpdateResult", "as_json", "top_labels"]


@dataclass
class UpdateResult:
    """What one update did: the candidate version, whether it was promoted and why, its scores."""

    version: int | None  # None: the gate refused the batch
    promoted: bool
    reason: str
    accuracy: dict[str, float]  # held-out score by batch (the kind's metric, 0-1), the new one included
    new_classes: list[str]  # answers no earlier batch brought: label names, or directions
    gate: str = ""  # what the data-quality gate found and did
    gate_decision: str = ""  # accept, quarantine or refuse


def _hash_tensor(hashes: list[str]) -> Tensor:
    """Row hashes as a uint8 tensor of 32 bytes a row, to keep with a batch."""
    return torch.tensor([list(bytes.fromhex(h)) for h in hashes], dtype=torch.uint8).reshape(-1, 32)


class Project:
    """A model store, its task kind and the config that trains it (kept in the store)."""

    def __init__(self, store: str | Path, progress: bool = False) -> None:
        self.store = ModelStore(store)
        self.progress = progress  # progress bars on the long steps (encoding new data, translating)
        self.kind, self.held_out_fraction, self.seed = open_kind(self.store)
        self._stored = self.store.config  # the config as kept: another process may retune it

    @property
    def config(self) -> Any:
        """The validated run config of the store's kind."""
        return self.kind.config

    @classmethod
    def init(cls, config: Any, data: str | Path, store: str | Path, *, held_out: float = 0.2,
             seed: int = 0, progress: bool = False, database: str | None = None) -> tuple[Project, UpdateResult]:
        """A new store whose version 1 is trained on ``data`` (a held-out slice kept aside), promoted.
        ``config``: a task kind's run config (a :class:`~retain.config.RunConfig` for
        classification). Its database is SQLite in the store's folder, or the empty one at the URL
        ``database`` (PostgreSQL, to share the store between hosts)."""
        if not 0 < held_out < 1:
            raise ValueError(f"held_out must be a fraction between 0 and 1, got {held_out}")
        kind = kind_of_config(config)
        config = kind.for_store(config)
        existed = Path(store).exists()
        ModelStore.create(store, config={"task": kind.name, "run": config.model_dump(mode="json"),
                                         "held_out": held_out, "seed": seed}, database=database)
        project = cls(store, progress)

        def undo() -> None:  # nothing was made: the same init can run again once the data is fixed
            for entry in Path(store).iterdir() if existed else [Path(store)]:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

        try:
            result = project._learn(Path(data), first=True)
        except BaseException:
            undo()
            raise
        if result.version is None:
            undo()
        return project, result

    # -- classification's label names ----------------------------------------------------------
    def labels(self) -> LabelMap:
        """The store's label names and ids; a batch's new names get the next ids."""
        return self.kind.label_map()

    def label_names(self, learner: Any) -> list[str]:
        """The name of each of ``learner``'s class ids (see :meth:`Classification.label_names`)."""
        return self.kind.label_names(learner)

    def retune(self, best: Any, why: str) -> None:
        """Make ``best``'s (a tuned config of the store's kind) training settings and strategy knobs
        the store's (``retain tune STORE --apply``): the next update, from the command line or the
        service, trains with them. Knobs a deployment cannot change are refused, naming them."""
        run = self.kind.retuned(best)
        self.kind.config = self.kind.validate(run)  # validated before it is kept
        self.store.set_config({"task": self.kind.name, "run": run, "held_out": self.held_out_fraction,
                               "seed": self.seed}, why)
        self._stored = self.store.config

    def _knobs(self, learner: Any) -> Any:
        """``learner`` (a saved version) with the store's current knobs: they may have been retuned
        since, here or by another process (``retain tune STORE --apply`` beside a running service)."""
        stored = self.store.config
        if stored != self._stored:
            self._stored = stored
            self.kind, self.held_out_fraction, self.seed = open_kind(self.store)
        return self.kind.retune(learner)

    # -- learning -------------------------------------------------------------------------------
    def _learn(self, data: Path, first: bool = False) -> UpdateResult:
        rows, names = self.kind.read_batch(data, first)
        return self.learn_rows(rows, names, source=str(data.resolve()), first=first)

    def learn(self, x: Tensor, names: list[str], y: Tensor, t: Tensor | None = None, *, source: str,
              first: bool = False) -> UpdateResult:
        """:meth:`update` on a classifier's labelled rows already read: raw inputs ``x`` with label
        ids ``y`` into ``names`` (the store's label names, then any new ones), from ``source``."""
        t = torch.zeros(len(y), dtype=torch.long) if t is None else t
        return self.learn_rows(Examples(x, y, t), names, source=source, first=first)

    def learn_rows(self, rows: Rows, names: list[str], *, source: str, first: bool = False) -> UpdateResult:
        """:meth:`update` on rows of the store's kind already read (``names``: a classifier's label
        names, the store's then any new ones), from ``source`` (named in the records)."""
        self.kind.check(rows, names, source)
        if self.store.promoted() is None and not first:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        rows = self.kind.prepare(rows, self.progress)
        with self.store.writer():  # one update or rollback at a time
            return self._learn_locked(rows, names, source, first)

    def _line(self, versions: list[Version] | None = None) -> list[Version]:
        """The promoted version and its ancestors (of ``versions``, default the store's): the versions
        whose batches the served model learned."""
        by_id = {v.id: v for v in (self.store.versions() if versions is None else versions)}
        promoted = next((v.id for v in by_id.values() if v.promoted), None)
        line = []
        while promoted is not None:
            line.append(by_id[promoted])
            promoted = by_id[promoted].parent
        return line

    def _learn_locked(self, rows: Rows, names: list[str], data: str, first: bool) -> UpdateResult:
        kind = self.kind
        parent = None if first else self.store.promoted()
        current = None if first else self._knobs(self.store.load(parent, device="cpu"))
        if current is not None:
            rows = kind.readable(current, rows, data)
        line_versions = [] if first else self._line()  # read once: the gate and the rule use it
        line = [v.id for v in line_versions]
        held_before = self.held_out(line)  # read once: the gate, the promoted and the candidate all use it
        report = self._gate(rows, current, line, held_before)
        new_names = kind.answers(rows, names, current)
        if report.decision == "refuse":
            self.store.log("gate", f"{data}: {report.reason}")
            return UpdateResult(None, False, report.reason, {}, new_names, report.reason, "refuse")
        quarantined = None
        if report.decision == "quarantine":
            bad = torch.tensor(report.flagged, dtype=torch.long)
            keep = torch.ones(len(rows), dtype=torch.bool)
            keep[bad] = False
            quarantined = rows.take(bad)
            rows = rows.take(keep.nonzero().squeeze(1))
        if not len(rows):
            reason = f"refused: every row was flagged or already learned ({report.reason})"
            self.store.log("gate", f"{data}: {reason}")
            return UpdateResult(None, False, reason, {}, new_names, report.reason, "refuse")
        k = len(self.store.held_out_names())  # batches of every version: names stay unique
        name = f"batch-{k:04d}"
        train_index, held_index = kind.split(rows, self.held_out_fraction, self.seed + k)
        if not len(held_index):
            raise TooFewRows(f"{data}: too few rows to hold any out ({kind.too_few})")
        if not len(train_index):
            raise TooFewRows(f"{data}: every row was held out, none is left to train on ({kind.too_few})")
        train, held = rows.take(train_index), rows.take(held_index)
        # Written before the version that refers to them, read only once it is recorded.
        self.store.put_data(name, held.tensors())
        self.store.put_data(f"{name}-train", {"hash": _hash_tensor(train.hashes())})
        judged = held_before | {name: held}
        # the promoted version, judged before the candidate (made from it) trains
        promoted = None if first else kind.parent_scores(current, held_before,
                                                         line_versions[0].metrics.get("accuracy", {}))
        confidence = None if first else kind.rule.confidence
        rows_before = kind.row_scores(current, held_before) if confidence else {}
        learner = kind.new_learner(train, names, self.seed) if first else current
        kind.fit(learner, train, held, k, names, self.progress)
        candidate = kind.scores(learner, judged)
        batches = [self._batch(train, str(data)), self._batch(held, name, "held_out")]
        if first:
            reason, promote = "the first version", True
        else:
            recorded = [v.metrics.get("accuracy", {}) for v in line_versions]
            best = {b: max(r[b] for r in recorded if b in r) for b in promoted}
            per_answer = kind.per_answer(learner, judged) if kind.rule.min_class_accuracy else {}
            rows_after = kind.row_scores(learner, held_before) if confidence else {}
            bounds = {k: drop_bound(v, rows_after[k], confidence, seed=self.seed) for k, v in rows_before.items()}
            decision = kind.rule.decide(candidate, promoted, kind.new_keys(candidate, name), per_answer, best,
                                        metric=kind.metric, bounds=bounds)
            reason, promote = decision.reason, decision.promote
        # One transaction records the version, its batches (its held-out rows are read from then on)
        # and, if the rule says so, its promotion: killed before it, the update left nothing behind.
        version = self.store.add_version(learner, parent=parent, metrics=self._metrics(candidate),
                                         batches=batches, decision="promoted" if promote else "kept", reason=reason,
                                         promote=promote)
        kind.after_version(names)
        if quarantined is not None:
            self.store.put_data(f"{name}-{slug(Path(data).name)}", quarantined.tensors(), kind="quarantine")
        self.store.log("gate", f"{data}: {report.reason}", version)
        return UpdateResult(version, promote, reason, candidate, new_names, report.reason, report.decision)

    def _metrics(self, scores: dict[str, float]) -> dict[str, Any]:
        """What a version records: its held-out scores, and by what metric when it is not accuracy."""
        return {"accuracy": scores} | ({"score": self.kind.metric} if self.kind.metric != "accuracy" else {})

    @staticmethod
    def _batch(rows: Rows, source: str, role: str = "train") -> Batch:
        return replace(Batch.of(*rows.content(), source=source, role=role), rows=len(rows))

    def _gate(self, rows: Rows, current: Any, line: list[int], held: dict[str, Rows]) -> GateReport:
        """The gate's look at a batch: against every row the served model learned or is judged on
        (their hashes), and what the kind checks besides."""
        known = {h for part in held.values() for h in part.hashes()}
        stored = set(self.store.data_names())
        for name in self.store.held_out_names(line):
            if f"{name}-train" in stored:
                known |= {bytes(h.tolist()).hex() for h in self.store.get_data(f"{name}-train")["hash"]}
        return self.kind.inspect(rows, current, held, known, self.seed)

    def update(self, data: str | Path) -> UpdateResult:
        """Check ``data``, train a candidate from the promoted version, judge it on every batch's
        held-out rows with the promotion rule, and promote it or keep it aside."""
        if self.store.promoted() is None:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        return self._learn(Path(data))

    # -- judging and answering --------------------------------------------------------------------
    def held_out(self, line: list[int] | None = None) -> dict[str, Any]:
        """The held-out rows of the batches the served model learned (``line``: those versions;
        default the promoted line), by batch name."""
        names = self.store.held_out_names([v.id for v in self._line()] if line is None else line)
        return {n: self.kind.held_rows(n) for n in names}

    def per_answer(self, learner: Any, held: dict[str, Any]) -> dict[str, float]:
        """``learner``'s score by class (by direction) over ``held``'s rows."""
        return self.kind.per_answer(learner, held)


    def predict(self, data: str | Path | Any, top_k: int = 1, version: int | None = None) -> list[Prediction]:
        """What ``version`` (default: the promoted one) predicts for ``data`` (a file or folder,
        labelled or not, or inputs): each row's answer and, for labels, its ``top_k`` with probabilities."""
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, got {top_k}")
        learner = self.store.load(version, device="cpu")
        return self.kind.predict(learner, data, top_k, self.progress)

    def evaluate(self, data: str | Path, version: int | None = None) -> dict[str, Any]:
        """The score of ``version`` (default: the promoted one) on the labelled ``data``: overall and
        per class (per direction); a classifier's rows of a class the store does not know count as errors."""
        version = self.store.promoted() if version is None else version
        return self.kind.evaluate(self.store.load(version, device="cpu"), Path(data), version, self.progress)

    def versions(self) -> list[dict[str, Any]]:
        """Every version: id, parent, whether promoted, its decision and reason, its held-out scores."""
        return [{"version": v.id, "parent": v.parent, "promoted": v.promoted, "decision": v.decision,
                 "reason": v.reason, "accuracy": v.metrics.get("accuracy", {}),
                 "data": [b.source for b in v.batches if b.role == "train"]} for v in self.store.versions()]

    def diff(self, a: int, b: int) -> dict[str, dict[str, float]]:
        """How version ``b`` differs from ``a`` on every batch's held-out rows: the score per batch
        and per class (direction), and the change (``b`` minus ``a``)."""
        learners = {v: self.store.load(v, device="cpu") for v in (a, b)}
        held = self.held_out([v.id for v in self.store.versions()])  # every batch any version learned
        by_batch = {v: self.kind.scores(learner, held) for v, learner in learners.items()}
        by_class = {v: self.kind.per_answer(learner, held) for v, learner in learners.items()}
        out = {}
        for kind, table in (("batch", by_batch), ("class", by_class)):
            for key in table[a]:
                out[key if kind == "batch" else f"{self.kind.labels} {key}"] = {
                    str(a): table[a][key], str(b): table[b][key], "change": table[b][key] - table[a][key]}
        return out

    def rollback(self, version: int | None = None) -> int:
        with self.store.writer():
            return self.store.rollback(version)


def as_json(value: Any) -> str:
    return json.dumps(value, indent=1)
