"""The end of a study: the best configs as YAML ``retain run`` takes, the trials table, Optuna's
plots, and the only read of the test sets: the default and the best config of every method,
trained with the final seeds and scored on them."""

from __future__ import annotations

import csv
import json
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from retain.config import MethodConfig  # noqa: E402
from retain.engine.learner import Diverged  # noqa: E402
from retain.experiment import run_method  # noqa: E402
from retain.monitor.report import percent  # noqa: E402
from retain.tuning.space import config_yaml, configured, knobs  # noqa: E402
from retain.tuning.study import Source, TuneError, open_storage, study_name  # noqa: E402
from retain.util import slug  # noqa: E402


def _plot(kind: str, study: optuna.Study, path: Path, **options: Any) -> bool:
    """Save one of Optuna's matplotlib plots; False when the study cannot draw it yet (too few trials)."""
    plotters: dict[str, Callable[..., Any]] = {"history": optuna.visualization.matplotlib.plot_optimization_history,
                "importance": optuna.visualization.matplotlib.plot_param_importances,
                "pareto": optuna.visualization.matplotlib.plot_pareto_front,
                "intermediate": optuna.visualization.matplotlib.plot_intermediate_values}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        try:
            ax = plotters[kind](study, **options)
        except (ValueError, RuntimeError, ZeroDivisionError):
            plt.close("all")
            return False
    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close("all")
    return True


def importances(study: optuna.Study) -> dict[str, float]:
    """Each knob's share of the variation of accuracy over the finished trials (fANOVA), or {}."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        return {}
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=target)
        except (ValueError, RuntimeError):
            return {}
    return {k: float(v) for k, v in found.items()}


def _trials_csv(study: optuna.Study, objectives: Sequence[str], path: Path) -> None:
    params = sorted({k for t in study.trials for k in t.params})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", *objectives, "last_experience", "seconds", *params, "note"])
        for t in study.trials:
            values = t.values or [None] * len(objectives)
            last = max(t.intermediate_values) if t.intermediate_values else None
            took = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and \
                t.datetime_start else None
            note = t.user_attrs.get("diverged") or ("" if t.state != TrialState.FAIL else "worker stopped")
            writer.writerow([t.number, t.state.name.lower(), *values, last, took,
                             *[t.params.get(p) for p in params], note])


def _best(study: optuna.Study) -> tuple[FrozenTrial, list[FrozenTrial]]:
    """The most accurate trial and the Pareto front (itself alone for a single objective)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise TuneError(f"study {study.study_name} has no finished trial: raise tune.trials or relax the pruner")
    if len(study.directions) == 1:
        return study.best_trial, [study.best_trial]
    front = sorted(study.best_trials, key=lambda t: -t.values[0])
    return front[0], front


def _final(source: Source, method: MethodConfig, values: dict[str, Any], tick: Any) -> dict[str, Any]:
    """The method with ``values`` (none: the config's own) trained with every final seed and scored on the test sets."""
    run = configured(source.cfg, method, values, seeds=source.cfg.tune.final_seeds)
    stream = source.stream()
    runs, diverged = [], []
    for seed in run.seeds:
        try:
            runs.append(run_method(stream, run, run.strategies[0], seed))
        except Diverged as err:
            diverged.append(f"seed {seed}: {err}")
        tick()
    if not runs:
        return {"acc": 0.0, "acc_std": 0.0, "accs": [], "forgetting": math.nan, "train_seconds": math.nan,
                "diverged": diverged}
    accs = [r.metrics.acc for r in runs] + [0.0] * len(diverged)  # a diverged run scores nothing
    forgetting = [r.metrics.forgetting for r in runs if not math.isnan(r.metrics.forgetting)]
    return {"acc": statistics.fmean(accs), "acc_std": statistics.pstdev(accs), "accs": accs,
            "forgetting": statistics.fmean(forgetting) if forgetting else math.nan,
            "train_seconds": statistics.fmean(r.metrics.train_seconds for r in runs), "diverged": diverged}


def write_tuning_report(source: Source, url: str, out: Path, progress: bool = True,
                        final: bool = True) -> list[dict[str, Any]]:
    """Everything a finished study leaves in ``out``; returns one row per method (also ``tune.json``).

    Args:
        source: what the studies tuned.
        url: the study database's URL.
        out: the report's folder.
        progress: show a progress bar over the test-set runs.
        final: also train the default and best configs with ``tune.final_seeds`` and score them on the test sets.

    Returns:
        One row per method: its trials, best trial and parameters, importances and (``final``) test scores.
    """
    cfg = source.cfg
    storage = open_storage(url)
    rows: list[dict[str, Any]] = []
    seeds = cfg.tune.final_seeds
    total = 2 * len(seeds) * len(cfg.strategies) if final else 0
    with tqdm(total=total, disable=not progress or not final, desc="test-set report", unit="run") as bar:
        for method in cfg.strategies:
            study = optuna.load_study(study_name=study_name(cfg, method), storage=storage)
            best, front = _best(study)
            name = slug(method.label)
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "best.yaml").write_text(_yaml(source, method, best, study))
            for t in front[1:]:
                (folder / f"pareto-trial-{t.number}.yaml").write_text(_yaml(source, method, t, study))
            _trials_csv(study, cfg.tune.objectives, folder / "trials.csv")
            single = len(study.directions) == 1
            target = {} if single else {"target": lambda t: t.values[0], "target_name": "accuracy"}
            wanted = {"history": target, "importance": target}
            if single and cfg.tune.pruner != "none":
                wanted["intermediate"] = {}
            if not single:
                wanted["pareto"] = {"target_names": cfg.tune.objectives}
            plots = {kind: _plot(kind, study, folder / f"{kind}.png", **options) for kind, options in wanted.items()}
            states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
            defaults = {k.key: k.default for k in knobs(cfg, method)}
            row: dict[str, Any] = {"method": method.label, "study": study.study_name, "trials": states,
                   "objectives": cfg.tune.objectives, "best_trial": best.number,
                   "best_validation": dict(zip(cfg.tune.objectives, best.values, strict=True)),
                   "best_params": best.params, "default_params": defaults, "importance": importances(study),
                   "pareto": [{"trial": t.number, "values": t.values, "params": t.params} for t in front],
                   "plots": [f"{name}/{k}.png" for k, ok in plots.items() if ok],
                   "best_config": f"{name}/best.yaml"}
            if final:
                row["test_default"] = _final(source, method, {}, bar.update)
                row["test_tuned"] = _final(source, method, best.params, bar.update)
                row["final_seeds"] = seeds
            rows.append(row)
    (out / "tune.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "report.md").write_text(_markdown(source, rows))
    if len(rows) == 1:
        (out / "best.yaml").write_text((out / rows[0]["best_config"]).read_text())
    return rows


def _yaml(source: Source, method: MethodConfig, trial: FrozenTrial, study: optuna.Study) -> str:
    values = ", ".join(f"{o} {v:.4g}" for o, v in zip(source.cfg.tune.objectives, trial.values, strict=True))
    return config_yaml(configured(source.cfg, method, trial.params),
                       f"tuned by retain tune: study {study.study_name}, trial {trial.number} (validation: {values})")




def _markdown(source: Source, rows: list[dict[str, Any]]) -> str:
    cfg = source.cfg
    lines = [f"# Tuning {cfg.name}", "",
             f"Source: `{source.path}`. Trials score on validation slices ({cfg.tune.validation_fraction:.0%} of "
             "each experience's training rows); the test sets were read once, below, for the default and the "
             "best configuration of each method.", ""]
    if any("test_tuned" in r for r in rows):
        seeds = ", ".join(str(s) for s in cfg.tune.final_seeds)
        lines += ["| method | trials (finished / pruned / failed) | validation ACC % best | test ACC % default "
                  "| test ACC % tuned | gain (points) |", "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            d, t = r["test_default"], r["test_tuned"]
            lines.append(f"| {r['method']} | {r['trials']['complete']} / {r['trials']['pruned']} / "
                         f"{r['trials']['fail']} | {percent(r['best_validation']['accuracy'])} "
                         f"| {percent(d['acc'])} ± {percent(d['acc_std'])} "
                         f"| {percent(t['acc'])} ± {percent(t['acc_std'])} "
                         f"| {100 * (t['acc'] - d['acc']):+.1f} |")
        lines += ["", f"Test ACC: mean ± std over seeds {seeds}.", ""]
    for r in rows:
        lines += [f"## {r['method']}", "", "| knob | default | best | importance |", "| --- | --- | --- | --- |"]
        for key in r["default_params"]:
            best = r["best_params"].get(key)
            lines.append(f"| {key} | {_value(r['default_params'][key])} | {_value(best)} "
                         f"| {percent(r['importance'][key]) + '%' if key in r['importance'] else 'n/a'} |")
        takes = "`retain init` takes it (a store's config)" if source.kind == "store" else \
            "`retain run` takes it as it is"
        lines += ["", f"Best config: [`{r['best_config']}`]({r['best_config']}) ({takes}); "
                  f"every trial: `{slug(r['method'])}/trials.csv`.", ""]
        if len(r["pareto"]) > 1:
            lines += [f"Pareto front ({', '.join(r['objectives'])}): " + "; ".join(
                f"trial {p['trial']}: " + ", ".join(f"{v:.3g}" for v in p["values"]) for p in r["pareto"]), ""]
        lines += [f"![{p}]({p})" for p in r["plots"]] + [""]
    return "\n".join(lines)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
