"""The loop on a model store: init, then receive a batch -> check it -> update -> evaluate on old and
new held-out data -> promote or keep the candidate; predict with the promoted version; roll back.

A :class:`Project` is the Python face of ``retain init / update / predict / versions / rollback``.
Each batch of the user's files is split into rows to train on and held-out rows (kept in the store),
so every later version is judged on every batch seen so far, with the promotion rule of the config.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retain.build import build_learner, model_inputs
from retain.config import RunConfig, modality_problem
from retain.data import Experience, Stream, split_held_out
from retain.data.files import Labeled, LabelMap, load
from retain.engine import Learner
from retain.quality import GateReport, check_batch, inspect
from retain.quality.gate import row_hashes
from retain.store import Batch, ModelStore, StoreError, Version
from retain.strategies import STRATEGIES
from retain.util import slug


@dataclass
class UpdateResult:
    """What one update did: the candidate version, whether it was promoted and why, its accuracy."""

    version: int | None  # None: the gate refused the batch
    promoted: bool
    reason: str
    accuracy: dict[str, float]  # held-out accuracy by batch, the new one included
    new_classes: list[str]
    gate: str = ""  # what the data-quality gate found and did
    gate_decision: str = ""  # accept, quarantine or refuse


@dataclass
class Prediction:
    """One row's prediction: where it came from, the label, and the top labels with probabilities."""

    row: str
    label: str
    top: list[tuple[str, float]]


def top_labels(probabilities: Tensor, names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Each row's ``k`` likeliest labels (fewer if there are fewer classes) with their probabilities."""
    values, ids = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [[(names[c], v) for c, v in zip(row, vs, strict=True)] for row, vs in zip(ids.tolist(), values.tolist(),
                                                                                     strict=True)]


def _hash_tensor(x: Tensor) -> Tensor:
    """Row hashes (``row_hashes``) as a uint8 tensor of 32 bytes a row, to keep with a batch."""
    return torch.tensor([list(bytes.fromhex(h)) for h in row_hashes(x)], dtype=torch.uint8).reshape(-1, 32)


class Project:
    """A model store and the config that trains it (kept in the store)."""

    def __init__(self, store: str | Path, progress: bool = False) -> None:
        self.store = ModelStore(store)
        self.progress = progress  # progress bars on the long steps (encoding new data with a backbone)
        self._stored = self.store.config["run"]  # the config as kept: another process may retune it
        self.config = RunConfig.for_loop(self._stored)
        self.held_out_fraction = float(self.store.config["held_out"])

    @classmethod
    def init(cls, config: RunConfig, data: str | Path, store: str | Path, *, held_out: float = 0.2,
             seed: int = 0, progress: bool = False, database: str | None = None) -> tuple[Project, UpdateResult]:
        """A new store whose version 1 is trained on ``data`` (a held-out slice kept aside), promoted.
        Its database is SQLite in the store's folder, or the empty one at the URL ``database``
        (PostgreSQL, to share the store between hosts)."""
        if not 0 < held_out < 1:
            raise ValueError(f"held_out must be a fraction between 0 and 1, got {held_out}")
        if "head" not in config.model.model_fields_set:  # new labels will come: the head grows with them
            config = config.model_copy(update={"model": config.model.model_copy(update={"head": "growing"})})
        existed = Path(store).exists()
        ModelStore.create(store, config={"run": config.model_dump(mode="json"), "held_out": held_out,
                                         "seed": seed}, database=database)
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

    def labels(self) -> LabelMap:
        """The store's label names and ids; a batch's new names get the next ids."""
        return LabelMap(self.store.labels(), numbers_are_ids=False)

    def _load(self, data: Path, labels: LabelMap, labelled: bool = True) -> Labeled:
        """The rows of ``data``, read as the config says (images at the size and channels the
        store's first batch had, unless the config sets them), if the model can read their kind."""
        options = self.config.scenario.files.options()
        described = self.store.meta("inputs")
        if described and described["modality"] == "vision":
            options |= {"size": options["size"] or described["shape"][-1],
                        "channels": options["channels"] or described["shape"][0]}
        rows = load(data, labels, labelled=labelled, **options)
        problem = modality_problem(self.config.model, rows.modality, str(data))
        if problem:
            raise ValueError(problem)
        return rows

    def retune(self, best: RunConfig, why: str) -> None:
        """Make ``best``'s training settings and strategies the store's (``retain tune STORE
        --apply``): the next update, from the command line or the service, trains with them."""
        learned = [s for m in best.strategies[:1] for s in m.compose]
        for part, current in zip(learned, self.config.strategies[0].compose, strict=False):
            fixed = sorted(k for k in part if k != "name" and part[k] != current.get(k)
                           and k not in STRATEGIES[part["name"]].tunable)
            if part["name"] != current["name"] or fixed:
                raise ValueError(f"{part['name']}.{', '.join(fixed) or 'name'}: the store's versions learned with "
                                 "the current value; only declared-tunable knobs can change in a deployment")
        run = self.store.config["run"] | {"training": best.training.model_dump(mode="json"),
                                          "strategies": [{"label": m.label, "compose": m.compose}
                                                         for m in best.strategies]}
        self.config = RunConfig.for_loop(run)  # validated before it is kept
        self.store.set_config(self.store.config | {"run": run}, why)
        self._stored = run

    def _knobs(self, learner: Learner) -> Learner:
        """``learner`` (a saved version) with the store's current knobs: they may have been retuned
        since, here or by another process (``retain tune STORE --apply`` beside a running service)."""
        stored = self.store.config["run"]
        if stored != self._stored:
            self._stored, self.config = stored, RunConfig.for_loop(stored)
        tr = self.config.training
        knobs = {p["name"]: {k: p[k] for k in STRATEGIES[p["name"]].tunable if k in p}
                 for p in self.config.strategies[0].compose}
        names = {s.name for s in learner.strategies}
        return learner.retune({"lr": tr.lr, "epochs": tr.epochs, "batch_size": tr.batch_size,
                               "momentum": tr.momentum, "backbone_lr": tr.backbone_lr},
                              {n: v for n, v in knobs.items() if v and n in names})

    def _learn(self, data: Path, first: bool = False) -> UpdateResult:
        labels = self.labels()
        rows = self._load(data, labels)
        if first:  # what inputs look like, for the service to read its requests alike
            self.store.set_meta("inputs", {"modality": rows.modality, "shape": list(rows.x.shape[1:])})
        return self.learn(rows.x, labels.names, rows.y, rows.t, source=str(data.resolve()), first=first)

    def learn(self, x: Tensor, names: list[str], y: Tensor, t: Tensor | None = None, *, source: str,
              first: bool = False) -> UpdateResult:
        """:meth:`update` on rows already read: raw inputs ``x`` with label ids ``y`` into ``names``
        (the store's label names, then any new ones), from ``source`` (named in the records)."""
        t = torch.zeros(len(y), dtype=torch.long) if t is None else t
        report = check_batch(x if x.dtype.is_floating_point else torch.zeros(len(y), 1), y, t, where=source)
        report.raise_if_refused()
        labels = LabelMap(list(names), numbers_are_ids=False)
        if labels.names[:len(self.store.labels())] != self.store.labels():
            raise ValueError(f"{source}: label names must extend the store's {self.store.labels()}")
        if self.store.promoted() is None and not first:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        x = model_inputs(self.config, x, self.progress)
        with self.store.writer():  # one update or rollback at a time
            return self._learn_locked(x, y, t, labels, source, first)

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

    def _learn_locked(self, x: Tensor, y: Tensor, t: Tensor, labels: LabelMap, data: str, first: bool) -> UpdateResult:
        parent = None if first else self.store.promoted()
        current = None if first else self._knobs(self.store.load(parent, device="cpu"))
        if current is not None:
            x = current.readable(x, where=data)
        line_versions = [] if first else self._line()  # read once: the gate and the rule use it
        line = [v.id for v in line_versions]
        held_before = self.held_out(line)  # read once: the gate, the promoted and the candidate all use it
        report = self._gate(x, y, current, line, held_before)
        new_names = labels.names[len(self.store.labels()):]  # names no earlier batch brought
        if report.decision == "refuse":
            self.store.log("gate", f"{data}: {report.reason}")
            return UpdateResult(None, False, report.reason, {}, new_names, report.reason, "refuse")
        quarantined = None
        if report.decision == "quarantine":
            bad = torch.tensor(report.flagged, dtype=torch.long)
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[bad] = False
            quarantined = {"x": x[bad], "y": y[bad], "t": t[bad]}
            x, y, t = x[keep], y[keep], t[keep]
        if not len(y):
            reason = f"refused: every row was flagged or already learned ({report.reason})"
            self.store.log("gate", f"{data}: {reason}")
            return UpdateResult(None, False, reason, {}, new_names, report.reason, "refuse")
        k = len(self.store.held_out_names())  # batches of every version: names stay unique
        name = f"batch-{k:04d}"
        train, held = split_held_out(y, self.held_out_fraction, int(self.store.config["seed"]) + k)
        if not len(held):
            raise ValueError(f"{data}: too few rows to hold any out (each class needs two or more)")
        # Written before the version that refers to them, read only once it is recorded.
        self.store.put_data(name, {"x": x[held], "y": y[held], "t": t[held]})
        self.store.put_data(f"{name}-train", {"hash": _hash_tensor(x[train])})
        judged = held_before | {name: (x[held], y[held], t[held])}
        # the promoted version, judged before the candidate (made from it) trains
        promoted = None if first else self._accuracy(current, held_before)
        exp = Experience(x[train], y[train], x[held], y[held], id=k, t_train=t[train], t_test=t[held])
        if first:
            stream = Stream([exp], n_classes=len(labels.names), class_names=labels.names)
            learner = build_learner(stream, self.config, self.config.strategies[0], int(self.store.config["seed"]))
        else:
            learner = current
        learner.class_names_ = list(labels.names)
        learner.fit(exp)
        candidate = self._accuracy(learner, judged)
        batches = [Batch.of(x[train], y[train], source=str(data)), Batch.of(x[held], y[held], source=name,
                                                                            role="held_out")]
        if first:
            reason, promote = "the first version", True
        else:
            recorded = [v.metrics.get("accuracy", {}) for v in line_versions]
            best = {b: max(r[b] for r in recorded if b in r) for b in promoted}
            decision = self.config.promotion.decide(candidate, promoted, name, self._per_class(learner, judged), best)
            reason, promote = decision.reason, decision.promote
        # One transaction records the version, its batches (its held-out rows are read from then on)
        # and, if the rule says so, its promotion: killed before it, the update left nothing behind.
        version = self.store.add_version(learner, parent=parent, metrics={"accuracy": candidate}, batches=batches,
                                         decision="promoted" if promote else "kept", reason=reason, promote=promote)
        self.store.set_labels(labels.names)
        if quarantined is not None:
            self.store.put_data(f"{name}-{slug(Path(data).name)}", quarantined, kind="quarantine")
        self.store.log("gate", f"{data}: {report.reason}", version)
        return UpdateResult(version, promote, reason, candidate, new_names, report.reason, report.decision)

    def _gate(self, x: Tensor, y: Tensor, current: Learner | None, line: list[int],
              held: dict[str, tuple] | None = None) -> GateReport:
        """The gate's look at a batch: duplicates of itself, of every row the served model learned
        or is judged on, and of its memory; label errors and outliers on the promoted model's
        features (raw inputs at first)."""
        names = self.store.held_out_names(line)
        held = self.held_out(line) if held is None else held
        rows = [held[name][0] for name in names]
        if current is not None:
            rows += [m.x for m in current.memories() if m.x.shape[1:] == x.shape[1:]]
        known = {h for part in rows for h in row_hashes(part)}
        stored = set(self.store.data_names())
        for name in names:
            if f"{name}-train" in stored:
                known |= {bytes(h.tolist()).hex() for h in self.store.get_data(f"{name}-train")["hash"]}
        featurize = current.features if current is not None else (lambda v: v)
        known_features = featurize(torch.cat(rows)) if rows else None
        return inspect(x, y, featurize(x), self.config.gate, known, seed=int(self.store.config["seed"]),
                       known_features=known_features)

    def update(self, data: str | Path) -> UpdateResult:
        """Check ``data``, train a candidate from the promoted version, judge it on every batch's
        held-out rows with the promotion rule, and promote it or keep it aside."""
        if self.store.promoted() is None:
            raise StoreError(f"{self.store.path}: no version is promoted to update")
        return self._learn(Path(data))

    def held_out(self, line: list[int] | None = None) -> dict[str, tuple]:
        """The held-out rows of the batches the served model learned (``line``: those versions;
        default the promoted line), by batch name."""
        names = self.store.held_out_names([v.id for v in self._line()] if line is None else line)
        return {n: tuple(self.store.get_data(n)[k] for k in ("x", "y", "t")) for n in names}

    @staticmethod
    def _accuracy(learner: Learner, held: dict[str, tuple]) -> dict[str, float]:
        return {name: float((learner.predict(x, t) == y).float().mean()) for name, (x, y, t) in held.items()}

    def _per_class(self, learner: Learner, held: dict[str, tuple]) -> dict[str, float]:
        parts = list(held.values())
        x, y, t = (torch.cat([p[i] for p in parts]) for i in range(3))
        hits = learner.predict(x, t) == y
        names = self.label_names(learner)
        return {names[c]: float(hits[y == c].float().mean()) for c in y.unique().tolist()}

    def label_names(self, learner: Learner) -> list[str]:
        """The name of each of ``learner``'s class ids: the store's, or the learner's own when it is
        newer (a kept candidate's); ids only grow, so the longer list holds the other."""
        return max(learner.class_names_, self.store.labels(), key=len)

    def _inputs(self, data: str | Path | Any, labelled: bool) -> tuple[Tensor, Tensor, Tensor, list[str], LabelMap]:
        """Model inputs, label ids (-1 unlabelled; names the store lacks get new ids), task ids, row
        names and label names of ``data``: a file or folder, or inputs as they are."""
        labels = self.labels()
        if not isinstance(data, str | Path):
            x = torch.as_tensor(data)
            return (x, torch.full((len(x),), -1), torch.zeros(len(x), dtype=torch.long),
                    [str(i) for i in range(len(x))], labels)
        rows = self._load(Path(data), labels, labelled)
        return model_inputs(self.config, rows.x, self.progress), rows.y, rows.t, rows.rows, labels

    def predict(self, data: str | Path | Any, top_k: int = 1, version: int | None = None) -> list[Prediction]:
        """What ``version`` (default: the promoted one) predicts for ``data`` (a file or folder,
        labelled or not, or inputs): each row's label and its ``top_k`` labels with probabilities."""
        if top_k < 1:
            raise ValueError(f"top_k must be 1 or more, got {top_k}")
        learner = self.store.load(version, device="cpu")
        x, _, t, rows, _ = self._inputs(data, labelled=False)
        p = learner.predict_proba(x, t, where=str(data) if isinstance(data, str | Path) else "inputs")
        tops = top_labels(p, self.label_names(learner), top_k)
        return [Prediction(row, top[0][0], [(n, round(v, 6)) for n, v in top]) for row, top in zip(rows, tops,
                                                                                                   strict=True)]

    def evaluate(self, data: str | Path, version: int | None = None) -> dict[str, Any]:
        """Accuracy of ``version`` (default: the promoted one) on the labelled ``data``: overall and
        per class; rows of a class the store does not know count as errors."""
        version = self.store.promoted() if version is None else version
        learner = self.store.load(version, device="cpu")
        x, y, t, _, labels = self._inputs(data, labelled=True)
        hits = learner.predict(x, t, where=str(data)) == y
        known = learner.model.head.n_outputs
        return {"version": version, "rows": len(y), "accuracy": float(hits.float().mean()),
                "per_class": {labels.names[c]: float(hits[y == c].float().mean()) for c in y.unique().tolist()},
                "unknown_classes": [labels.names[c] for c in y.unique().tolist() if c >= known]}

    def versions(self) -> list[dict[str, Any]]:
        """Every version: id, parent, whether promoted, its decision and reason, its held-out accuracy."""
        return [{"version": v.id, "parent": v.parent, "promoted": v.promoted, "decision": v.decision,
                 "reason": v.reason, "accuracy": v.metrics.get("accuracy", {}),
                 "data": [b.source for b in v.batches if b.role == "train"]} for v in self.store.versions()]

    def diff(self, a: int, b: int) -> dict[str, dict[str, float]]:
        """How version ``b`` differs from ``a`` on every batch's held-out rows: accuracy per batch
        and per class, and the change (``b`` minus ``a``)."""
        learners = {v: self.store.load(v, device="cpu") for v in (a, b)}
        held = self.held_out([v.id for v in self.store.versions()])  # every batch any version learned
        by_batch = {v: self._accuracy(learner, held) for v, learner in learners.items()}
        by_class = {v: self._per_class(learner, held) for v, learner in learners.items()}
        out = {}
        for kind, table in (("batch", by_batch), ("class", by_class)):
            for key in table[a]:
                out[key if kind == "batch" else f"class {key}"] = {str(a): table[a][key], str(b): table[b][key],
                                        "change": table[b][key] - table[a][key]}
        return out

    def rollback(self, version: int | None = None) -> int:
        with self.store.writer():
            return self.store.rollback(version)


def as_json(value: Any) -> str:
    return json.dumps(value, indent=1)
