"""Tuning a store whose model writes its answers (translation, transcription) on the rows the store holds.

The promoted line's held-out rows are the data, batch by batch: each batch's rows are cut by a
salted hash the kind draws (:meth:`~retain.tasks.TaskKind.tuning_share`: a translation's sources, a
clip's audio) into training rows, a validation slice the trials are scored on, and a test part
only the final comparison reads (the store's own knobs against the best, trained alike on
training and validation rows). The kind says what is searched (:meth:`~retain.tasks.TaskKind.tuning_values`:
the learning rate, a decade either side; the LoRA rank, where the model has adapters; the first
method's declared-tunable strategy knobs) and how a trial's values set its config. A trial trains
a fresh model batch after batch, as the store did, and is scored after each batch by the kind's
metric averaged over every batch's validation slice (0 for batches not learned yet), which the
pruner reads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
import yaml
from tqdm.auto import tqdm

from retain.config import SearchRange
from retain.engine.protocol import Trained, train_and_score
from retain.loop import Project
from retain.strategies import STRATEGIES
from retain.tasks import Rows
from retain.tasks.base import WrittenAnswers
from retain.tuning.space import Knob, whole_numbers
from retain.tuning.study import TuneError, open_storage, storage_url

TEST_PERCENT, VALIDATION_PERCENT = 30, 20
RANKS = [4, 8, 16]


def _cut(kind: WrittenAnswers[Any], rows: Rows, percent: int, salt: str) -> tuple[Rows, Rows]:
    """``rows`` split by the kind's salted hash: about ``percent``% on the second side."""
    mask = kind.tuning_share(rows, percent, salt)
    return rows.take(mask.logical_not().nonzero().squeeze(1)), rows.take(mask.nonzero().squeeze(1))


def store_slices(project: Project) -> list[tuple[Rows, Rows, Rows]]:
    """Each held-out batch of the promoted line as (training, validation, test) rows."""
    kind, held = project.kind, project.held_out()
    if not isinstance(kind, WrittenAnswers):
        raise TuneError(f"{project.store.path}: not a store whose model writes its answers (its task is {kind.name})")
    if len(held) < 2:
        raise TuneError(f"{project.store.path}: the promoted version learned {len(held)} batch(es); tuning the "
                        "knobs that keep old batches needs two or more")
    slices = []
    for name, rows in held.items():
        rest, test = _cut(kind, rows, TEST_PERCENT, "tune-test")
        train, validation = _cut(kind, rest, VALIDATION_PERCENT, "tune-validation")
        if not len(train) or not len(validation) or not len(test):
            raise TuneError(f"{project.store.path}: batch {name} holds {len(rows)} held-out rows, too few to cut "
                            "into training, validation and test rows: tune once the store holds more")
        slices.append((train, validation, test))
    return slices


def answer_knobs(kind: WrittenAnswers[Any]) -> list[Knob]:
    """The knobs of :meth:`~retain.tasks.TaskKind.tuning_values` with their ranges: the learning rate a
    decade either side of the config's, the LoRA rank among :data:`RANKS`, a strategy knob over the
    range its strategy declares."""
    found = []
    for key, default in kind.tuning_values().items():
        owner, name = key.split(".", 1)
        if key == "training.lr":
            space = SearchRange(low=default / 10, high=default * 10, log=True)
        elif key == "model.lora_rank":
            space = SearchRange(choices=RANKS)
        else:
            space = SearchRange.model_validate(STRATEGIES[owner].tunable[name])
        whole = key == "model.lora_rank" or (owner not in ("training", "model") and whole_numbers(owner, name))
        found.append(Knob(key, space, whole, default))
    return found


def _train(project: Project, cfg: Any, chunks: list[Rows], judged: list[Rows],
           tick: Any = lambda i, so_far: None) -> Trained:
    """A fresh model of ``cfg`` trained chunk after chunk, scored after each on ``judged`` (the kind's
    metric, 0-1; 0 for the batches not learned yet)."""
    kind = type(project.kind)(project.store, cfg.model_dump(mode="json"))
    assert isinstance(kind, WrittenAnswers)  # tune_answers_store takes no other store
    learner = kind.new_learner(chunks[0], [], cfg.seed)
    learned = [0]

    def score(fitted: Any) -> list[float]:
        learned[0] += 1
        return [kind.score_rows(fitted, part) if i < learned[0] else 0.0 for i, part in enumerate(judged)]

    return train_and_score([learner], list(enumerate(chunks)), score, tick,
                           fit=lambda fitted, chunk: kind.fit(fitted, chunk[1], chunk[1], chunk[0], []))


def tune_answers_store(path: str | Path, out: str | Path, trials: int = 8, storage: str | None = None,
                       progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Tune a store whose model writes its answers (see the module docstring); writes ``best.yaml``,
    ``trials.csv``, ``results.json`` and ``report.md`` to ``out`` and returns the summary row
    (validation and test scores of the kind's metric, 0-1)."""
    project = Project(path)
    kind = project.kind
    if not isinstance(kind, WrittenAnswers):
        raise TuneError(f"{path}: not a store whose model writes its answers (its task is {kind.name})")
    cfg, slices = project.config, store_slices(project)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = answer_knobs(kind)
    study = optuna.create_study(storage=open_storage(storage_url(storage, out)), study_name=f"{cfg.name}.store",
                                direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, trials // 3)),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    if not study.trials:  # trial 0: the store's own knobs
        study.enqueue_trial({k.key: k.default for k in found if k.holds(k.default)})
    train, validation = [s[0] for s in slices], [s[1] for s in slices]

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = kind.tuned({k.key: k.suggest(trial) for k in found})

        def report(i: int, so_far: Trained) -> None:
            trial.report(sum(so_far.rows[-1]) / len(validation), i)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{kind.metric} {100 * sum(so_far.rows[-1]) / len(validation):.1f} "
                                         f"after batch {i}")

        return sum(_train(project, trial_cfg, train, validation, report).rows[-1]) / len(validation)

    done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    with tqdm(total=trials, initial=min(done, trials), disable=not progress, unit="trial",
              desc=f"tune {cfg.name}") as bar:
        while done < trials:
            study.optimize(objective, n_trials=1, catch=())
            done += 1
            bar.update(1)
    best, default = kind.tuned(study.best_params), kind.tuned({})
    whole = [kind.join([t, v]) for t, v, _ in slices]
    test = [s[2] for s in slices]
    scores = {name: _train(project, c, whole, test).rows[-1] for name, c in (("default", default), ("tuned", best))}
    row = {"method": cfg.methods[0].label, "task": kind.name, "metric": kind.metric, "best_params": study.best_params,
           "best_validation": {"accuracy": study.best_value},
           "test_default": {"acc": sum(scores["default"]) / len(test), "per_batch": scores["default"]},
           "test_tuned": {"acc": sum(scores["tuned"]) / len(test), "per_batch": scores["tuned"]},
           "best_config": "best.yaml", "rows": {"train": sum(map(len, train)),
                                                "validation": sum(map(len, validation)), "test": sum(map(len, test))}}
    _write(out, study, best, row, [k.key for k in found])
    return row


def _write(out: Path, study: optuna.Study, best: Any, row: dict[str, Any], searched: list[str]) -> None:
    metric, rows = row["metric"], row["rows"]
    (out / "best.yaml").write_text(f"# retain tune on a {row['task']} store: best validation {metric} "
                                   f"{100 * study.best_value:.1f}\n" + yaml.safe_dump(best.model_dump(mode="json"),
                                                                                    sort_keys=False))
    with open(out / "trials.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = sorted({k for t in study.trials for k in t.params})
        writer.writerow(["trial", "state", f"validation {metric}", *keys])
        for t in study.trials:
            writer.writerow([t.number, t.state.name, "" if t.value is None else round(100 * t.value, 2),
                             *(t.params.get(k, "") for k in keys)])
    (out / "results.json").write_text(json.dumps(row, indent=1) + "\n")
    params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                       for k, v in row["best_params"].items())

    def line(label: str, key: str) -> str:
        scores = ", ".join(f"{100 * v:.1f}" for v in row[key]["per_batch"])
        return f"| {label} | {100 * row[key]['acc']:.1f} | {scores} |"

    rank = ("; its LoRA rank applies to a new store only: a store's adapters keep the rank they were made with"
            if "model.lora_rank" in searched else "")
    (out / "report.md").write_text(f"""# Tuning a {row['task']} store

{len(study.trials)} trials over {', '.join(f'`{k}`' for k in searched)}, each trained on the store's
held-out rows batch after batch ({rows['train']} training rows) and scored by the mean {metric}
over every batch's validation slice ({rows['validation']} rows). The test part ({rows['test']} rows)
is read once, below.

Best: {params or 'the defaults'} (validation {metric} {100 * row['best_validation']['accuracy']:.1f}).

| knobs | test {metric} (mean over batches) | per batch |
| --- | --- | --- |
{line("the store's own", "test_default")}
{line("tuned", "test_tuned")}

Trials: `trials.csv`; the tuned config: `best.yaml`{rank}.
""")
