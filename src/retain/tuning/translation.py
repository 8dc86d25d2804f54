"""Tuning a translation store: the learning rate, LoRA rank and replay knobs, on the pairs the store holds.

The promoted line's held-out pairs are the data, batch by batch: each batch's sources are cut by
a hash into training pairs, a validation slice the trials are scored on, and a test part only the
final comparison reads (the default knobs against the best, trained alike on training and
validation pairs). A trial trains a fresh model batch after batch, as the store did, and is scored
after each batch by the mean chrF++ over every batch's validation slice (0 for batches not learned
yet), which the pruner reads.
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
from retain.engine.generative import GenerativeLearner
from retain.engine.protocol import Trained, train_and_score
from retain.loop import Project
from retain.strategies import STRATEGIES
from retain.tasks.translation import Pairs, Translation, TranslationConfig, build_translator
from retain.tuning.space import Knob
from retain.tuning.study import TuneError, open_storage, storage_url

TEST_PERCENT, VALIDATION_PERCENT = 30, 20
RANKS = [4, 8, 16]


def _cut(rows: Pairs, percent: int, salt: str) -> tuple[Pairs, Pairs]:
    """``rows`` split by a hash of their sources: about ``percent``% on the second side."""
    mask = rows.by_source(percent, salt)
    return rows.take(mask.logical_not().nonzero().squeeze(1)), rows.take(mask.nonzero().squeeze(1))


def store_slices(project: Project) -> list[tuple[Pairs, Pairs, Pairs]]:
    """Each held-out batch of the promoted line as (training, validation, test) pairs."""
    held = project.held_out()
    if len(held) < 2:
        raise TuneError(f"{project.store.path}: the promoted version learned {len(held)} batch(es); tuning the "
                        "knobs that keep old directions needs two or more")
    slices = []
    for name, rows in held.items():
        rest, test = _cut(rows, TEST_PERCENT, "tune-test")
        train, validation = _cut(rest, VALIDATION_PERCENT, "tune-validation")
        if not len(train) or not len(validation) or not len(test):
            raise TuneError(f"{project.store.path}: batch {name} holds {len(rows)} held-out pairs, too few to cut "
                            "into training, validation and test pairs: tune once the store holds more")
        slices.append((train, validation, test))
    return slices


def translation_knobs(cfg: TranslationConfig) -> list[Knob]:
    """The learning rate (a decade either side of the config's), the LoRA rank (shared adapters
    and experts) and the tunable knobs of the first method's strategies (replay: ratio and weight)."""
    method = cfg.methods[0]
    lr = method.lr or cfg.training.lr
    found = [Knob("training.lr", SearchRange(low=lr / 10, high=lr * 10, log=True), False, lr)]
    if (method.adaptation or cfg.model.adaptation) != "full":
        found.append(Knob("model.lora_rank", SearchRange(choices=RANKS), True, cfg.model.lora_rank))
    for part in method.compose:
        for knob, raw in STRATEGIES[part["name"]].tunable.items():
            default = part.get(knob, getattr(STRATEGIES[part["name"]], knob, None))
            found.append(Knob(f"{part['name']}.{knob}", SearchRange.model_validate(raw), False, default))
    return found


def configured_translation(cfg: TranslationConfig, values: dict[str, Any]) -> TranslationConfig:
    """``cfg`` with a trial's ``values`` set (its first method alone)."""
    raw = cfg.model_dump(mode="json")
    method = raw["methods"][0]
    raw["methods"] = [method]
    for key, value in values.items():
        owner, name = key.split(".", 1)
        if key == "training.lr":
            method["lr"] = value
        elif key == "model.lora_rank":
            raw["model"]["lora_rank"] = value
        else:
            next(p for p in method["compose"] if p["name"] == owner)[name] = value
    return TranslationConfig.model_validate(raw)


def _train(project: Project, cfg: TranslationConfig, chunks: list[Pairs], judged: list[Pairs],
           tick: Any = lambda i, so_far: None) -> Trained:
    """A fresh model of ``cfg`` trained chunk after chunk, scored after each on ``judged`` (chrF++ / 100;
    0 for the batches not learned yet)."""
    kind = Translation(project.store, cfg.model_dump(mode="json"))
    learner = build_translator(cfg, cfg.methods[0])
    learned = [0]

    def score(fitted: GenerativeLearner) -> list[float]:
        learned[0] += 1
        return [kind.chrf(fitted, part) if i < learned[0] else 0.0 for i, part in enumerate(judged)]

    return train_and_score([learner], list(enumerate(chunks)), score, tick,
                           fit=lambda fitted, chunk: kind.fit(fitted, chunk[1], chunk[1], chunk[0], []))


def tune_translation_store(path: str | Path, out: str | Path, trials: int = 8, storage: str | None = None,
                           progress: bool = True, seed: int = 0) -> dict[str, Any]:
    """Tune a translation store (see the module docstring); writes ``best.yaml``, ``trials.csv`` and
    ``report.md`` to ``out`` and returns the summary row (validation and test chrF++ / 100)."""
    project = Project(path)
    if not isinstance(project.kind, Translation):
        raise TuneError(f"{path}: not a translation store")
    cfg, slices = project.config, store_slices(project)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    found = translation_knobs(cfg)
    study = optuna.create_study(storage=open_storage(storage_url(storage, out)), study_name=f"{cfg.name}.store",
                                direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, trials // 3)),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    if not study.trials:  # trial 0: the store's own knobs
        study.enqueue_trial({k.key: k.default for k in found if k.holds(k.default)})
    train, validation = [s[0] for s in slices], [s[1] for s in slices]

    def objective(trial: optuna.Trial) -> float:
        trial_cfg = configured_translation(cfg, {k.key: k.suggest(trial) for k in found})

        def report(i: int, so_far: Trained) -> None:
            trial.report(sum(so_far.rows[-1]) / len(validation), i)
            if trial.should_prune():
                raise optuna.TrialPruned(f"chrF++ {100 * sum(so_far.rows[-1]) / len(validation):.1f} after batch {i}")

        return sum(_train(project, trial_cfg, train, validation, report).rows[-1]) / len(validation)

    done = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)
    with tqdm(total=trials, initial=min(done, trials), disable=not progress, unit="trial",
              desc=f"tune {cfg.name}") as bar:
        while done < trials:
            study.optimize(objective, n_trials=1, catch=())
            done += 1
            bar.update(1)
    best = configured_translation(cfg, study.best_params)
    default = configured_translation(cfg, {})
    whole = [Pairs(t.sources + v.sources, t.targets + v.targets, t.langs + v.langs) for t, v, _ in slices]
    test = [s[2] for s in slices]
    scores = {name: _train(project, c, whole, test).rows[-1] for name, c in (("default", default), ("tuned", best))}
    row = {"method": cfg.methods[0].label, "metric": "chrF++", "best_params": study.best_params,
           "best_validation": {"accuracy": study.best_value},
           "test_default": {"acc": sum(scores["default"]) / len(test), "per_batch": scores["default"]},
           "test_tuned": {"acc": sum(scores["tuned"]) / len(test), "per_batch": scores["tuned"]},
           "best_config": "best.yaml", "pairs": {"train": sum(map(len, train)),
                                                 "validation": sum(map(len, validation)), "test": sum(map(len, test))}}
    _write(out, study, best, row)
    return row


def _write(out: Path, study: optuna.Study, best: TranslationConfig, row: dict[str, Any]) -> None:
    (out / "best.yaml").write_text(f"# retain tune on a translation store: best validation chrF++ "
                                   f"{100 * study.best_value:.1f}\n" + yaml.safe_dump(best.model_dump(mode="json"),
                                                                                    sort_keys=False))
    with open(out / "trials.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = sorted({k for t in study.trials for k in t.params})
        writer.writerow(["trial", "state", "validation_chrf", *keys])
        for t in study.trials:
            writer.writerow([t.number, t.state.name, "" if t.value is None else round(100 * t.value, 2),
                             *(t.params.get(k, "") for k in keys)])
    (out / "results.json").write_text(json.dumps(row, indent=1) + "\n")
    params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                       for k, v in row["best_params"].items())

    def line(label: str, key: str) -> str:
        scores = ", ".join(f"{100 * v:.1f}" for v in row[key]["per_batch"])
        return f"| {label} | {100 * row[key]['acc']:.1f} | {scores} |"

    (out / "report.md").write_text(f"""# Tuning a translation store

{len(study.trials)} trials over the learning rate, LoRA rank and the first method's tunable strategy
knobs, each trained on the store's held-out pairs batch after batch ({row['pairs']['train']} training
pairs) and scored by the mean chrF++ over every batch's validation slice ({row['pairs']['validation']}
pairs). The test part ({row['pairs']['test']} pairs) is read once, below.

Best: {params or 'the defaults'} (validation chrF++ {100 * row['best_validation']['accuracy']:.1f}).

| knobs | test chrF++ (mean over batches) | per batch |
| --- | --- | --- |
{line("the store's own", "test_default")}
{line("tuned", "test_tuned")}

Trials: `trials.csv`; the tuned config: `best.yaml` (its LoRA rank applies to a new store only:
a store's adapters keep the rank they were made with).
""")
