"""Classification: rows are inputs (features, images, text, audio) with a label, scored by accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from retain.build import build_learner, model_inputs
from retain.config import RunConfig, modality_problem
from retain.data import Experience, Stream, split_held_out
from retain.data.files import TABLES, Labeled, LabelMap, load, table_records
from retain.engine import Learner
from retain.engine.learner import KNOBS
from retain.quality import GateReport, check_batch, inspect
from retain.quality.gate import row_hashes
from retain.strategies import STRATEGIES
from retain.tasks.base import Prediction, TaskKind, only_tunable_changed


class Examples(NamedTuple):
    """Labelled rows as the model reads them: inputs, label ids, task ids."""

    x: Tensor
    y: Tensor
    t: Tensor
    origin: tuple[str, ...] = ()  # where each row came from (a table's row number, a file), when read from files

    def __len__(self) -> int:  # rows, not fields (so build them by name, not with _replace)
        return len(self.y)

    def take(self, index: Tensor) -> Examples:
        origin = tuple(self.origin[i] for i in index.tolist()) if self.origin else ()
        return Examples(self.x[index], self.y[index], self.t[index], origin)

    def tensors(self) -> dict[str, Tensor]:
        return {"x": self.x, "y": self.y, "t": self.t}

    def hashes(self) -> list[str]:
        return row_hashes(self.x)

    def content(self) -> tuple[Tensor, ...]:
        """What a batch's hash is taken over."""
        return self.x, self.y


def top_labels(probabilities: Tensor, names: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Each row's ``k`` likeliest labels (fewer if there are fewer classes) with their probabilities.

    Args:
        probabilities: class probabilities, a row each (``[rows, classes]``).
        names: the name of each class id.
        k: how many labels a row lists.

    Returns:
        For each row, its labels' names with their probabilities, likeliest first.

    >>> [(name, round(p, 2)) for name, p in top_labels(torch.tensor([[0.2, 0.7, 0.1]]), ["cat", "dog", "owl"], 2)[0]]
    [('dog', 0.7), ('cat', 0.2)]
    """
    values, ids = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [[(names[c], v) for c, v in zip(row, vs, strict=True)] for row, vs in zip(ids.tolist(), values.tolist(),
                                                                                     strict=True)]


class Classification(TaskKind[Examples]):
    """Rows with a label among classes that grow as batches bring new ones; a version is scored by
    its accuracy on each batch's held-out rows (a fifth of each class by default)."""

    name = "classification"
    metric = "accuracy"
    labels = "class"
    config_type = RunConfig
    too_few = "each class needs two or more"

    @classmethod
    def for_store(cls, config: RunConfig) -> RunConfig:
        if "head" not in config.model.model_fields_set:  # new labels will come: the head grows with them
            config = config.model_copy(update={"model": config.model.model_copy(update={"head": "growing"})})
        return config

    @classmethod
    def validate(cls, run: dict[str, Any]) -> RunConfig:
        return RunConfig.for_loop(run)

    def retuned(self, best: RunConfig) -> dict[str, Any]:
        only_tunable_changed([s for m in best.strategies[:1] for s in m.compose], self.config.strategies[0].compose)
        run: dict[str, Any] = self.config.model_dump(mode="json")
        return run | {
            "training": best.training.model_dump(mode="json"),
            "strategies": [{"label": m.label, "compose": m.compose} for m in best.strategies]}

    def knobs(self) -> dict[str, Any]:
        return {k: getattr(self.config.training, k) for k in KNOBS}

    def label_map(self) -> LabelMap:
        """The store's label names and ids; a batch's new names get the next ids."""
        return LabelMap(self.store.labels(), numbers_are_ids=False)

    def load(self, data: Path, labels: LabelMap, labelled: bool = True) -> Labeled:
        """The rows of ``data``, read as the config says (images at the size and channels the
        store's first batch had, unless the config sets them), if the model can read their kind."""
        options = self.config.scenario.files.options()
        described = self.store.meta("inputs")
        options["expect_features"] = (described or {}).get("features")  # matched by name to the first batch's
        if described and described["modality"] == "vision":
            options |= {"size": options["size"] or described["shape"][-1],
                        "channels": options["channels"] or described["shape"][0]}
        rows = load(data, labels, labelled=labelled, **options)
        problem = modality_problem(self.config.model, rows.modality, str(data))
        if problem:
            raise ValueError(problem)
        return rows

    def read_batch(self, data: Path, first: bool) -> tuple[Examples, list[str]]:
        labels = self.label_map()
        rows = self.load(data, labels)
        if first:  # what inputs look like, for the service to read its requests alike
            self.store.set_meta("inputs", {"modality": rows.modality, "shape": list(rows.x.shape[1:]),
                                           "features": rows.feature_columns})
        return Examples(rows.x, rows.y, rows.t, tuple(rows.rows)), labels.names

    def as_came(self, data: Path, rows: Examples, names: list[str]) -> list[dict[str, Any]]:
        """Each of ``rows`` as the user's ``data`` held it: its label, and a table's record (its
        columns, by its row number) or the file; rows read otherwise (the service's) name no origin."""
        labels = [{"label": names[y]} for y in rows.y.tolist()]
        if not rows.origin or not data.exists():
            return labels
        if data.is_file() and data.suffix.lower() in TABLES:
            wanted = {int(o.removeprefix("row ")) for o in rows.origin if o.startswith("row ")}
            records = {number: record for number, record in table_records(data) if number in wanted}
            return [out | {"row": o, "record": records.get(int(o.removeprefix("row ")), {})}
                    for out, o in zip(labels, rows.origin, strict=True)]
        return [out | {"file": data / o if data.is_dir() else data} for out, o in zip(labels, rows.origin, strict=True)]

    def check(self, rows: Examples, names: list[str], where: str) -> None:
        x, y, t = rows.x, rows.y, rows.t
        check_batch(x if x.dtype.is_floating_point else torch.zeros(len(y), 1), y, t, where=where).raise_if_refused()
        if len(set(names)) != len(names):  # ids are matched to the store's by name under the writer lock
            raise ValueError(f"{where}: label names must be unique, got {names}")

    def prepare(self, rows: Examples, progress: bool = False) -> Examples:
        return Examples(self.model_inputs(rows.x, progress), rows.y, rows.t, rows.origin)

    def relabel(self, rows: Examples, names: list[str]) -> tuple[Examples, list[str]]:
        """Label ids given before the writer lock was taken, made the store's now: another update
        may have given the next ids to other new names meanwhile."""
        known = self.store.labels()
        if names[:len(known)] == known:
            return rows, names
        merged = known + [n for n in names if n not in known]
        ids = torch.tensor([merged.index(n) for n in names], dtype=torch.long)
        return Examples(rows.x, ids[rows.y], rows.t, rows.origin), merged

    def recorded_labels(self, names: list[str]) -> list[str]:
        return names

    def join(self, parts: list[Examples]) -> Examples:
        origin = sum((p.origin for p in parts), ()) if all(p.origin for p in parts) else ()
        return Examples(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                        torch.cat([p.t for p in parts]), origin)

    def model_inputs(self, x: Tensor, progress: bool = False) -> Tensor:
        """Raw inputs as the model reads them (a frozen backbone's features where it has one)."""
        return model_inputs(self.config, x, progress)

    def rows_of(self, tensors: dict[str, Tensor]) -> Examples:
        return Examples(tensors["x"], tensors["y"], tensors["t"])

    def answers(self, rows: Examples, names: list[str], learner: Learner | None) -> list[str]:
        return names[len(self.store.labels()):]  # names no earlier batch brought

    def answer_names(self, rows: Examples, answers: list[str]) -> list[str]:
        return answers

    def split(self, rows: Examples, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
        return split_held_out(rows.y, fraction, seed)

    def new_learner(self, rows: Examples, names: list[str], seed: int) -> Learner:
        stream = Stream([Experience(rows.x, rows.y, rows.x[:0], rows.y[:0])], n_classes=len(names), class_names=names)
        return build_learner(stream, self.config, self.config.strategies[0], seed)

    def readable(self, learner: Learner, rows: Examples, where: str) -> Examples:
        return Examples(learner.readable(rows.x, where=where), rows.y, rows.t, rows.origin)

    def fit(self, learner: Learner, train: Examples, held: Examples, index: int, names: list[str],
            progress: bool = False) -> None:
        learner.class_names_ = list(names)
        learner.fit(Experience(train.x, train.y, held.x, held.y, id=index, t_train=train.t, t_test=held.t))

    def retune(self, learner: Learner) -> Learner:
        knobs = {p["name"]: {k: p[k] for k in STRATEGIES[p["name"]].tunable if k in p}
                 for p in self.config.strategies[0].compose}
        names = {s.name for s in learner.strategies}
        return learner.retune(self.knobs(), {n: v for n, v in knobs.items() if v and n in names})

    def inspect(self, rows: Examples, current: Learner | None, held: dict[str, Examples], known: set[str],
                seed: int) -> GateReport:
        """Duplicates of the batch itself, of every row the served model learned or is judged on,
        and of its memory; label errors (never of a row the promoted model labels alike), outliers and
        drift from those rows on the promoted model's features (raw inputs at first)."""
        x, y = rows.x, rows.y
        parts, labels = [h.x for h in held.values()], [h.y for h in held.values()]
        if current is not None:
            memories = [m for m in current.memories() if m.x.shape[1:] == x.shape[1:]]
            parts += [m.x for m in memories]
            labels += [m.y for m in memories]
        known = known | {h for part in parts[len(held):] for h in row_hashes(part)}
        featurize = current.features if current is not None else (lambda v: v)
        known_features = featurize(torch.cat(parts)) if parts else None
        confirmed = current.predict(x, rows.t) == y if current is not None else None
        return inspect(x, y, featurize(x), self.gate_policy, known, seed=seed, known_features=known_features,
                       known_y=torch.cat(labels) if labels else None, confirmed=confirmed)

    def scores(self, learner: Learner, held: dict[str, Examples]) -> dict[str, float]:
        return {name: float(hits.mean()) for name, hits in self.row_scores(learner, held).items()}

    def row_scores(self, learner: Learner, held: dict[str, Examples]) -> dict[str, Tensor]:
        return {name: (learner.predict(rows.x, rows.t) == rows.y).float() for name, rows in held.items()}

    def per_answer(self, learner: Learner, held: dict[str, Examples]) -> dict[str, float]:
        parts = list(held.values())
        x, y, t = (torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), torch.cat([p.t for p in parts]))
        hits = learner.predict(x, t) == y
        names = self.label_names(learner)
        return {names[c]: float(hits[y == c].float().mean()) for c in torch.unique(y).tolist()}

    def label_names(self, learner: Learner) -> list[str]:
        """The name of each of ``learner``'s class ids: the store's, or the learner's own when it is
        newer (a kept candidate's); ids only grow, so the longer list holds the other."""
        return max(learner.class_names_, self.store.labels(), key=len)

    def inputs(self, data: Any, labelled: bool, progress: bool = False
               ) -> tuple[Tensor, Tensor, Tensor, list[str], LabelMap]:
        """Model inputs, label ids (-1 unlabelled; names the store lacks get new ids), task ids, row
        names and label names of ``data``: a file or folder, or inputs as they are."""
        labels = self.label_map()
        if not isinstance(data, str | Path):
            x = torch.as_tensor(data)
            return (x, torch.full((len(x),), -1), torch.zeros(len(x), dtype=torch.long),
                    [str(i) for i in range(len(x))], labels)
        rows = self.load(Path(data), labels, labelled)
        return self.model_inputs(rows.x, progress), rows.y, rows.t, rows.rows, labels

    def predict(self, learner: Learner, data: Any, top_k: int, progress: bool = False) -> list[Prediction]:
        x, _, t, rows, _ = self.inputs(data, labelled=False, progress=progress)
        p = learner.predict_proba(x, t, where=str(data) if isinstance(data, str | Path) else "inputs")
        tops = top_labels(p, self.label_names(learner), top_k)
        return [Prediction(row, top[0][0], [(n, round(v, 6)) for n, v in top]) for row, top in zip(rows, tops,
                                                                                                   strict=True)]

    def evaluate(self, learner: Learner, data: Path, version: int, progress: bool = False) -> dict[str, Any]:
        x, y, t, _, labels = self.inputs(data, labelled=True, progress=progress)
        hits = learner.predict(x, t, where=str(data)) == y
        known = learner.model.head.n_outputs
        return {"version": version, "rows": len(y), "accuracy": float(hits.float().mean()),
                "per_class": {labels.names[c]: float(hits[y == c].float().mean()) for c in torch.unique(y).tolist()},
                "unknown_classes": [labels.names[c] for c in torch.unique(y).tolist() if c >= known]}
