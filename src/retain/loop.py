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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retain.data.files import LabelMap
from retain.engine.persist import durable_write
from retain.metrics.bootstrap import drop_bound
from retain.quality import GateReport
from retain.store import KEPT, Batch, ModelStore, Pending, StoreError, Version
from retain.tasks import Prediction, Rows, kind_of_config, open_kind
from retain.tasks.base import TooFewRows
from retain.tasks.classification import Classification, Examples, top_labels
from retain.util import slug

__all__ = ["Prediction", "Project", "UpdateResult", "as_json", "top_labels"]


@dataclass
class UpdateResult:
    """What one update did: the candidate version, whether it was promoted and why, its scores.

    Attributes:
        version: the candidate's version number; None: the gate refused the batch.
        promoted: whether the candidate was promoted.
        reason: why it was promoted or kept aside, and what became of the rows.
        accuracy: held-out score by batch (the kind's metric, 0-1), the new one included.
        new_classes: answers no earlier batch brought: label names, or directions.
        gate: what the data-quality gate found and did.
        gate_decision: accept, quarantine or refuse.
    """

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
    """A model store, its task kind and the config that trains it (kept in the store).

    Args:
        store: the store's folder (made by :meth:`init` or ``retain init``).
        progress: show progress bars on the long steps (encoding new data, translating).
    """

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
        Its database is SQLite in the store's folder, or the empty one at the URL ``database``
        (PostgreSQL, to share the store between hosts).

        Args:
            config: a task kind's run config (a :class:`~retain.config.RunConfig` for classification).
            data: the first batch: a file or folder of the kind's rows.
            store: the folder to make the store in (empty or new).
            held_out: the share of each batch held out to judge versions on, 0-1 (exclusive).
            seed: the seed of the held-out draws and of the first learner.
            progress: show progress bars on the long steps.
            database: the URL of an empty PostgreSQL database to keep the records in (None: SQLite in the folder).

        Returns:
            The project on the new store and what its first update did. When the gate refuses the batch,
            nothing is left behind and the result's version is None.

        Raises:
            ValueError: ``held_out`` is not between 0 and 1.
        """
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
        """The store's label names and ids; a batch's new names get the next ids.

        Returns:
            The label map of a classifier's store.

        Raises:
            StoreError: the store is not a classifier's.
        """
        if not isinstance(self.kind, Classification):
            raise StoreError(f"{self.store.path}: a {self.kind.name} store has no label ids (a classifier's has)")
        return self.kind.label_map()

    def label_names(self, learner: Any) -> list[str]:
        """The name of each of ``learner``'s class ids (see :meth:`Classification.label_names`).

        Args:
            learner: a version's learner.

        Returns:
            The names, by id.
        """
        return self.kind.label_names(learner)

    def retune(self, best: Any, why: str) -> None:
        """Make ``best``'s (a tuned config of the store's kind) training settings and strategy knobs
        the store's (``retain tune STORE --apply``): the next update, from the command line or the
        service, trains with them. Knobs a deployment cannot change are refused, naming them.

        Args:
            best: the tuned config.
            why: the reason recorded with the change.

        Raises:
            ValueError: ``best`` changes a knob a deployment cannot change.
        """
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
              first: bool = False, feedback: Sequence[int] = ()) -> UpdateResult:
        """:meth:`update` on a classifier's labelled rows already read.

        Args:
            x: raw inputs, a row each.
            names: the store's label names, then any new ones.
            y: label ids into ``names``.
            t: task ids (None: task 0).
            source: where the rows came from, named in the records.
            first: whether they make the store's first version.
            feedback: the service's feedback rows they are, settled with the version.

        Returns:
            What the update did.
        """
        t = torch.zeros(len(y), dtype=torch.long) if t is None else t
        return self.learn_rows(Examples(x, y, t), names, source=source, first=first, feedback=feedback)

    def learn_rows(self, rows: Rows, names: list[str], *, source: str, first: bool = False,
                   feedback: Sequence[int] = ()) -> UpdateResult:
        """:meth:`update` on rows of the store's kind already read.

        Args:
            rows: the rows.
            names: a classifier's label names, the store's then any new ones.
            source: where the rows came from, named in the records.
            first: whether they make the store's first version.
            feedback: the service's feedback rows they are, settled with the version.

        Returns:
            What the update did.

        Raises:
            StoreError: no version is promoted to update (and ``first`` is not set).
        """
        self.kind.check(rows, names, source)
        if self.store.promoted() is None and not first:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        rows = self.kind.prepare(rows, self.progress)
        with self.store.writer():  # one update or rollback at a time
            rows, names = self.kind.relabel(rows, names)  # new label ids are given under the lock
            return self._learn_locked(rows, names, source, first, list(feedback))

    def retry(self, batches: list[str]) -> UpdateResult:
        """Learn again batches whose candidates were kept (pending, held or dropped: see
        :meth:`ModelStore.pending`), on the promoted line, with any other pending ones (``retain
        update --retry``).

        Args:
            batches: the names of the kept batches to learn again.

        Returns:
            What the update did.

        Raises:
            StoreError: no version is promoted, or a name is not a batch waiting to be learned.
        """
        if self.store.promoted() is None:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        with self.store.writer():
            waiting = {p.name for p in self.store.pending(KEPT)}
            unknown = [b for b in batches if b not in waiting]
            if unknown:
                raise StoreError(f"{unknown[0]} is not a batch waiting to be learned; those waiting: "
                                 f"{', '.join(sorted(waiting)) or 'none'} (retain status lists them)")
            return self._learn_locked(None, self.store.labels(), "retry " + ", ".join(batches), False, [], batches)

    # -- rows set aside: quarantined by the gate, kept with a candidate ----------------------------
    def review(self, name: str) -> list[dict[str, Any]]:
        """The rows of a quarantined or kept batch ``name`` as they came (see :meth:`_review`).

        Args:
            name: the batch's name.

        Returns:
            One mapping a row: its source, row or file, answer and why it was set aside (empty: none kept).
        """
        path = self.store.path / "review" / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def quarantined(self) -> list[dict[str, Any]]:
        """The batches of rows the gate set aside, not yet released or dropped: name, rows, and each
        row as it came.

        Returns:
            One mapping a batch, with ``name``, ``rows`` and ``review``.
        """
        return [{"name": name, "rows": len(self.kind.rows_of(self.store.get_data(name, "quarantine"))),
                 "review": self.review(name)} for name in self.store.data_names("quarantine")]

    def release(self, name: str) -> str:
        """Quarantined rows ``name`` a reviewer found good: they wait (pending) to be learned by the
        next update, as a kept batch's rows do.

        Args:
            name: the quarantined batch's name.

        Returns:
            The name they wait under.

        Raises:
            StoreError: no quarantined rows are named ``name``.
        """
        with self.store.writer():
            rows = self._quarantined(name)
            promoted = self.store.promoted()
            if promoted is None:  # rows are quarantined only by an update, which leaves a version promoted
                raise StoreError(f"{self.store.path}: no version is promoted to learn the released rows")
            waiting = f"{name}-released"
            try:
                train, held = self.kind.split(rows, self.held_out_fraction, self.seed)
            except TooFewRows:  # too few to hold any out: all are learned, none judged
                train, held = torch.arange(len(rows)), torch.arange(0)
            if len(held) and len(train):
                self.store.put_data(waiting, rows.take(held).tensors())
                rows = rows.take(train)
            self.store.put_data(f"{waiting}-pending", rows.tensors())
            self.store.add_pending(Pending(waiting, 0.0, 0, f"quarantine {name}", len(rows), "pending",
                                           detail="released by a reviewer"), promoted)
            self.store.drop_data(name, "quarantine")
        return waiting

    def drop(self, name: str) -> None:
        """Quarantined rows ``name`` a reviewer found bad: deleted, with a record (the store's log;
        their review file is kept as ``review/<name>.dropped.jsonl``).

        Args:
            name: the quarantined batch's name.

        Raises:
            StoreError: no quarantined rows are named ``name``.
        """
        with self.store.writer():
            rows = self._quarantined(name)
            self.store.drop_data(name, "quarantine")
            review = self.store.path / "review" / f"{name}.jsonl"
            if review.is_file():
                review.replace(review.with_suffix(".dropped.jsonl"))
            self.store.log("quarantine", f"{name}: {len(rows)} rows dropped by a reviewer")

    def _quarantined(self, name: str) -> Rows:
        names = self.store.data_names("quarantine")
        if name not in names:
            raise StoreError(f"no quarantined rows are named {name!r}; those quarantined: {', '.join(names) or 'none'}")
        rows: Rows = self.kind.rows_of(self.store.get_data(name, "quarantine"))
        return rows

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

    def _waiting(self, retry: list[str]) -> list[Pending]:
        """The kept batches this update learns again: those pending (the rule's ``kept: carry``) and
        those named to retry."""
        return [p for p in self.store.pending(KEPT) if p.status == "pending" or p.name in retry]

    def _learn_locked(self, rows: Rows | None, names: list[str], data: str, first: bool, feedback: list[int],
                      retry: Sequence[str] = ()) -> UpdateResult:
        parent = None if first else self.store.promoted()
        current = None if first else self._knobs(self.store.load(parent, device="cpu"))
        kind = self.kind  # as the store's config says now (_knobs reads a retune made meanwhile)
        waiting = [] if first else self._waiting(list(retry))
        line_versions = [] if first else self._line()  # read once: the gate and the rule use it
        line = [v.id for v in line_versions]
        held_before = self.held_out(line)  # read once: the gate, the promoted and the candidate all use it
        new_names, report, quarantined = [], GateReport(0, reason="nothing new: pending batches only"), None
        train_parts, judged_new, batches = [], {}, []
        k = len(self.store.held_out_names())  # batches of every version: names stay unique
        name = f"batch-{k:04d}"
        if rows is not None:
            if current is not None:
                rows = kind.readable(current, rows, data)
            report = self._gate(rows, current, line, held_before, waiting)
            new_names = kind.answers(rows, names, current)
            if report.decision == "refuse":
                self.store.log("gate", f"{data}: {report.reason}")
                return UpdateResult(None, False, report.reason, {}, new_names, report.reason, "refuse")
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
            train_index, held_index = kind.split(rows, self.held_out_fraction, self.seed + k)
            aside = f"; the gate set {len(report.flagged)} aside ({report.reason})" if quarantined is not None else ""
            if not len(held_index):
                raise TooFewRows(f"{data}: too few rows to hold any out ({kind.too_few}){aside}")
            if not len(train_index):
                raise TooFewRows(f"{data}: every row was held out, none is left to train on ({kind.too_few}){aside}")
            train, held = rows.take(train_index), rows.take(held_index)
            # Written before the version that refers to them, read only once it is recorded.
            self.store.put_data(name, held.tensors())
            self.store.put_data(f"{name}-train", {"hash": _hash_tensor(train.hashes())})
            train_parts.append(train)
            judged_new[name] = held
            batches += [self._batch(train, str(data)), self._batch(held, name, "held_out")]
        stored = set(self.store.data_names())
        for batch in waiting:  # a kept batch's rows, learned again on the promoted line
            rows_of = kind.rows_of(self.store.get_data(f"{batch.name}-pending"))
            train_parts.append(rows_of)
            new_names += [a for a in kind.answers(rows_of, names, current) if a not in new_names]
            batches.append(self._batch(rows_of, batch.source))
            if batch.name in stored:  # released quarantined rows too few to hold any out have none
                judged_new[batch.name] = kind.held_rows(batch.name)
                batches.append(self._batch(judged_new[batch.name], batch.name, "held_out"))
        train = train_parts[0] if len(train_parts) == 1 else kind.join(train_parts)
        held = judged_new[name] if name in judged_new else next(iter(judged_new.values()), train)
        judged = held_before | judged_new
        # the promoted version, judged before the candidate (made from it) trains
        promoted = None if first else kind.parent_scores(current, held_before,
                                                         line_versions[0].metrics.get("accuracy", {}))
        rule = kind.rule
        rows_before = kind.row_scores(current, held_before) if not first and rule.confidence else {}
        gain_before = kind.scores(current, judged_new) if not first and rule.gain_weight else {}
        learner = kind.new_learner(train, names, self.seed) if first else current
        assert learner is not None  # current is None only for the first version
        kind.fit(learner, train, held, k, names, self.progress)
        candidate = kind.scores(learner, judged)
        new_keys = [key for b in judged_new for key in kind.new_keys(candidate, b)]
        if first:
            reason, promote = "the first version", True
        else:
            assert promoted is not None  # judged above for every version but the first
            recorded = [v.metrics.get("accuracy", {}) for v in line_versions]
            best = {b: max(r[b] for r in recorded if b in r) for b in promoted}
            per_answer = kind.per_answer(learner, judged) if rule.min_class_accuracy else {}
            rows_after = kind.row_scores(learner, held_before) if rule.confidence else {}
            judged_c, judged_p, bounds = self._pooled(candidate, promoted, rows_before, rows_after, rule)
            gain = (sum(candidate[key] - gain_before[key] for key in new_keys) / len(new_keys)
                    if gain_before and new_keys else 0.0)
            decision = rule.decide(judged_c, judged_p, new_keys, per_answer, best, metric=kind.metric,
                                   bounds=bounds, gain=gain)
            reason, promote = decision.reason, decision.promote
        kept = None
        if not promote and rows is not None:  # its rows wait, are held or are dropped, with a record
            self.store.put_data(f"{name}-pending", train_parts[0].tensors())
            status = {"carry": "pending", "hold": "held", "drop": "dropped"}[rule.kept]
            kept = Pending(name, 0.0, 0, str(data), len(train_parts[0]) + len(judged_new[name]), status,
                           detail=reason)
        # One transaction records the version, its batches (its held-out rows are read from then on),
        # its label names, what became of the rows it learned and, if the rule says so, its promotion:
        # killed before it, the update left nothing behind.
        version = self.store.add_version(learner, parent=parent, metrics=self._metrics(candidate),
                                         batches=batches, decision="promoted" if promote else "kept", reason=reason,
                                         promote=promote, labels=kind.recorded_labels(names),
                                         carried=[b.name for b in waiting], pending=kept, feedback=feedback)
        if quarantined is not None:
            why = {i: w for w, found in (("duplicate", report.duplicates), ("likely label error", report.label_issues),
                                         ("outlier", report.outliers)) for i in found}
            label = f"{name}-{slug(Path(data).name)}"
            self.store.put_data(label, quarantined.tensors(), kind="quarantine")
            self._review(label, quarantined, data, names, [why.get(i, "flagged") for i in report.flagged])
        if kept is not None:
            self._review(name, kind.join([train_parts[0], judged_new[name]]), data, names, [reason] * kept.rows)
        if rows is not None:
            self.store.log("gate", f"{data}: {report.reason}", version)
        return UpdateResult(version, promote, reason + self._fate(promote, kept, waiting), candidate, new_names,
                            report.reason, report.decision)

    def _review(self, name: str, rows: Rows, data: str, names: list[str], why: list[str]) -> None:
        """Keep ``rows`` as they came, for review: ``STORE/review/<name>.jsonl`` holds a line a row
        (its source, row or file, answer, why it was set aside), the files copied beside it."""
        folder = self.store.path / "review"
        lines = []
        for came, reason in zip(self.kind.as_came(Path(data), rows, names), why, strict=True):
            if "file" in came:  # an image or clip: a copy, named by where it came from
                copy = folder / name / slug(str(came["file"]))
                copy.parent.mkdir(parents=True, exist_ok=True)
                if Path(came["file"]).is_file():
                    shutil.copyfile(came["file"], copy)
                came = came | {"file": str(came["file"]), "copy": str(copy.relative_to(self.store.path))}
            lines.append(json.dumps({"source": data, "why": reason} | came, default=str))
        folder.mkdir(exist_ok=True)
        durable_write(folder / f"{name}.tmp", ("\n".join(lines) + "\n").encode())
        (folder / f"{name}.tmp").replace(folder / f"{name}.jsonl")

    @staticmethod
    def _fate(promote: bool, kept: Pending | None, carried: list[Pending]) -> str:
        """What became of the rows of the batches an update learned, when not simply learned."""
        if promote:
            return f"; learned the {len(carried)} batches that waited" if len(carried) > 1 else (
                f"; learned {carried[0].name}, which waited" if carried else "")
        out = ""
        if kept is not None:
            out = {"pending": f"; its {kept.rows} rows wait as {kept.name} for the next update",
                   "held": f"; its {kept.rows} rows are held as {kept.name} (retain update --retry {kept.name})",
                   "dropped": f"; its {kept.rows} rows were dropped ({kept.name}: retain status lists it)",
                   }[kept.status]
        waited = [b.name for b in carried]
        return out + (f"; {', '.join(waited)} still wait{'s' if len(waited) == 1 else ''}" if waited else "")

    @staticmethod
    def _pooled(candidate: dict[str, float], promoted: dict[str, float], before: dict[str, Tensor],
                after: dict[str, Tensor], rule: Any) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        """The scores the rule judges and the bounds of their drops: earlier batches with fewer than
        ``min_held_out`` held-out rows judged together, as one (on 9 rows a row is 11 points)."""
        small = [key for key, rows in before.items() if len(rows) < rule.min_held_out]
        bounds = {key: drop_bound(rows, after[key], rule.confidence) for key, rows in before.items()
                  if key not in small}
        if not small:
            return candidate, promoted, bounds
        rows_b, rows_a = torch.cat([before[key] for key in small]), torch.cat([after[key] for key in small])
        pooled = f"{'+'.join(small)} ({len(rows_b)} rows)" if len(small) > 1 else small[0]
        candidate = {key: v for key, v in candidate.items() if key not in small} | {pooled: float(rows_a.mean())}
        promoted = {key: v for key, v in promoted.items() if key not in small} | {pooled: float(rows_b.mean())}
        return candidate, promoted, bounds | {pooled: drop_bound(rows_b, rows_a, rule.confidence)}

    def _metrics(self, scores: dict[str, float]) -> dict[str, Any]:
        """What a version records: its held-out scores, and by what metric when it is not accuracy."""
        return {"accuracy": scores} | ({"score": self.kind.metric} if self.kind.metric != "accuracy" else {})

    @staticmethod
    def _batch(rows: Rows, source: str, role: str = "train") -> Batch:
        return replace(Batch.of(*rows.content(), source=source, role=role), rows=len(rows))

    def _gate(self, rows: Rows, current: Any, line: list[int], held: dict[str, Rows], waiting: list[Pending]
              ) -> GateReport:
        """The gate's look at a batch: against every row the served model learned or is judged on
        (their hashes) or that waits to be learned, and what the kind checks besides."""
        known = {h for part in held.values() for h in part.hashes()}
        known |= {h for batch in waiting for h in self.kind.held_rows(batch.name).hashes()}
        stored = set(self.store.data_names())
        for name in self.store.held_out_names(line) + [batch.name for batch in waiting]:
            if f"{name}-train" in stored:
                known |= {bytes(h.tolist()).hex() for h in self.store.get_data(f"{name}-train")["hash"]}
        return self.kind.inspect(rows, current, held, known, self.seed)

    def update(self, data: str | Path) -> UpdateResult:
        """Check ``data``, train a candidate from the promoted version, judge it on every batch's
        held-out rows with the promotion rule, and promote it or keep it aside.

        Args:
            data: the batch: a file or folder of the kind's rows.

        Returns:
            What the update did.

        Raises:
            StoreError: no version is promoted to update.
        """
        if self.store.promoted() is None:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        return self._learn(Path(data))

    # -- judging and answering --------------------------------------------------------------------
    def held_out(self, line: list[int] | None = None) -> dict[str, Any]:
        """The held-out rows of the batches the served model learned, by batch name.

        Args:
            line: the versions whose batches to take (None: the promoted version and its ancestors).

        Returns:
            Held-out rows by batch name.
        """
        names = self.store.held_out_names([v.id for v in self._line()] if line is None else line)
        return {n: self.kind.held_rows(n) for n in names}

    def per_answer(self, learner: Any, held: dict[str, Any]) -> dict[str, float]:
        """``learner``'s score by class (by direction) over ``held``'s rows.

        Args:
            learner: a version's learner.
            held: held-out rows by batch (:meth:`held_out`).

        Returns:
            The kind's metric (0-1) by class or direction.
        """
        return self.kind.per_answer(learner, held)


    def predict(self, data: str | Path | Any, top_k: int = 1, version: int | None = None) -> list[Prediction]:
        """What ``version`` (default: the promoted one) predicts for ``data`` (a file or folder,
        labelled or not, or inputs): each row's answer and, for labels, its ``top_k`` with probabilities.

        Args:
            data: a file or folder, labelled or not, or inputs as they are.
            top_k: how many likeliest labels each row lists, 1 or more.
            version: the version to ask (None: the promoted one).

        Returns:
            One prediction a row.

        Raises:
            ValueError: ``top_k`` is below 1.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, got {top_k}")
        learner = self.store.load(version, device="cpu")
        return self.kind.predict(learner, data, top_k, self.progress)

    def evaluate(self, data: str | Path, version: int | None = None) -> dict[str, Any]:
        """The score of ``version`` (default: the promoted one) on the labelled ``data``: overall and
        per class (per direction); a classifier's rows of a class the store does not know count as errors.

        Args:
            data: a labelled file or folder.
            version: the version to score (None: the promoted one).

        Returns:
            The version, the rows, the score overall and by class or direction (JSON values).

        Raises:
            StoreError: no version is promoted (and ``version`` is None).
        """
        version = self.store.promoted() if version is None else version
        if version is None:
            raise StoreError(f"{self.store.path}: no version is promoted yet")
        return self.kind.evaluate(self.store.load(version, device="cpu"), Path(data), version, self.progress)

    def versions(self) -> list[dict[str, Any]]:
        """Every version: id, parent, whether promoted, its decision and reason, its held-out scores.

        Returns:
            One mapping a version, oldest first.
        """
        return [{"version": v.id, "parent": v.parent, "promoted": v.promoted, "decision": v.decision,
                 "reason": v.reason, "accuracy": v.metrics.get("accuracy", {}),
                 "data": [b.source for b in v.batches if b.role == "train"]} for v in self.store.versions()]

    def diff(self, a: int, b: int) -> dict[str, dict[str, float]]:
        """How version ``b`` differs from ``a`` on every batch's held-out rows: the score per batch
        and per class (direction), and the change (``b`` minus ``a``).

        Args:
            a: the version compared from.
            b: the version compared to.

        Returns:
            By batch and by class (``class <name>``): each version's score and the change, 0-1.
        """
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

    # -- shadow: a kept candidate answering live traffic beside the promoted version -----------------
    def shadow(self) -> int | None:
        """The candidate to serve in shadow: the newest kept version made from the promoted one.

        Returns:
            Its version number, or None.
        """
        promoted = self.store.promoted()
        return None if promoted is None else self.store.newest_kept(promoted)

    def shadow_verdict(self, version: int, min_rows: int,
                       hits: tuple[list[float], list[float]] | None = None) -> tuple[bool, str] | None:
        """Whether the candidate ``version``, answering in shadow, should replace the promoted version,
        judged on the live rows feedback labelled since: None before ``min_rows`` were; True when
        it was right more often, surely (the lower bound of its paired bootstrap gain, at the rule's
        confidence, above 0).

        Args:
            version: the candidate answering in shadow.
            min_rows: the fewest labelled live rows to judge on.
            hits: :meth:`Intake.shadow_hits` of ``version`` when read already (None: read them).

        Returns:
            None before ``min_rows`` rows were labelled; else whether to promote it and why.
        """
        shadow, served = self.store.intake.shadow_hits(version, self.kind.answer_score) if hits is None else hits
        if len(shadow) < min_rows:
            return None
        ahead, behind = torch.tensor(shadow, dtype=torch.float64), torch.tensor(served, dtype=torch.float64)
        confidence = self.kind.rule.confidence or 0.9
        gain = drop_bound(ahead, behind, confidence, seed=self.seed)
        right = "right" if self.kind.metric == "accuracy" else (self.kind.row_metric or f"{self.kind.metric} per row")
        return gain > 0, (f"in shadow, {100 * float(ahead.mean()):.1f}% {right} on {len(shadow)} live rows labelled "
                          f"since, the promoted version {100 * float(behind.mean()):.1f}% (gain at least "
                          f"{100 * gain:.1f} points with {100 * confidence:.0f}% confidence)")

    def promote(self, version: int, reason: str) -> None:
        """Promote ``version`` (a kept candidate the live rows favour, say); the batches it learned
        that waited are learned from then on.

        Args:
            version: the version to promote.
            reason: why, recorded with it.
        """
        with self.store.writer():
            self.store.promote(version, reason)

    def rollback(self, version: int | None = None) -> int:
        """Promote ``version``, or by default the parent of the promoted one.

        Args:
            version: the version to serve again (None: the promoted one's parent).

        Returns:
            The version promoted.

        Raises:
            StoreError: nothing is promoted yet, or the promoted version has no parent.
        """
        with self.store.writer():
            return self.store.rollback(version)


def as_json(value: Any) -> str:
    """``value`` as indented JSON (what the commands print with ``--json``).

    Args:
        value: JSON-able values.

    Returns:
        The JSON text.

    >>> print(as_json({"version": 2}))
    {
     "version": 2
    }
    """
    return json.dumps(value, indent=1)
