"""``retain tune``: Optuna studies over each method's knobs, and ``--apply`` to a model store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from retain.cli.errors import reported


def tune(args: argparse.Namespace) -> int:
    """``retain tune``: the study (resumed if its database exists), the best configs and their test scores."""
    import torch

    with reported():  # without optuna: one line naming the extra to install
        from retain.tuning import TuneError, optimize, read_source, storage_url
        from retain.tuning import tune as run_study

    answers = _answers_store(args.source)
    if answers:
        return _tune_answers(args, answers)
    try:
        with reported(TuneError):
            source = read_source(args.source)
            if args.trials:
                source.cfg.tune.trials = args.trials
            out = Path(args.out or Path(source.cfg.output) / f"{source.cfg.name}-tune")
            if args.worker is not None:  # one of the processes `--workers` started: trials only
                torch.set_num_threads(args.threads)
                optimize(source, storage_url(args.storage, out), worker=args.worker)
                return 0
            if args.apply and (source.kind != "store" or args.no_final):
                raise TuneError("--apply retunes a model store, after the test-set comparison (without --no-final)")
            if (out / "study.db").exists() and args.storage is None:
                print(f"resuming the study in {out / 'study.db'}", file=sys.stderr)
            rows = run_study(source, out, workers=args.workers, storage=args.storage, progress=not args.quiet,
                             final=not args.no_final)
    except KeyboardInterrupt:
        print("retain: interrupted; run the same command again to resume the study", file=sys.stderr)
        return 130
    for r in rows:
        best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items())
        line = f"{r['method']}: validation {100 * r['best_validation']['accuracy']:.1f}% with {best or 'the defaults'}"
        if "test_tuned" in r:
            d, t = r["test_default"]["acc"], r["test_tuned"]["acc"]
            line += f"; test {100 * d:.1f}% default -> {100 * t:.1f}% tuned"
        print(line)
    print("best config: " + (str(out / "best.yaml") if len(rows) == 1 else ", ".join(str(out / r["best_config"])
                                                                                 for r in rows)))
    print(f"report: {out / 'report.md'}")
    if args.apply:
        _apply_tuning(args.source, rows[0], out)
    return 0


def _apply_tuning(store: str, row: dict[str, Any], out: Path) -> None:
    """``retain tune STORE --apply``: the best knobs become the store's, if they beat its own on the test rows."""
    from retain.config import load_config
    from retain.loop import Project

    tuned, default = row["test_tuned"]["acc"], row["test_default"]["acc"]
    if tuned <= default:
        print(f"not applied: the tuned knobs scored {100 * tuned:.1f}% on the held-out test rows, the store's own "
              f"{100 * default:.1f}%")
        return
    best = load_config(out / row["best_config"], loop=True)
    Project(store).retune(best, f"retain tune: {row['best_params']} ({100 * default:.1f}% -> {100 * tuned:.1f}% on "
                                f"held-out test rows); report {out / 'report.md'}")
    print(f"applied: the next update of {store} trains with the tuned knobs")


def _answers_store(path: str) -> str | None:
    """The task of ``path`` if it is a model store whose model writes its answers (translation, transcription)."""
    from retain.store import ModelStore, StoreError
    from retain.tasks import stored_run, task_kind

    if not (Path(path) / "store.db").is_file() and not (Path(path) / "database.url").is_file():
        return None
    try:
        kind = task_kind(stored_run(ModelStore(path).config)[0])
    except (StoreError, OSError, KeyError):
        return None
    return kind.name if kind.writes_answers else None


def _tune_answers(args: argparse.Namespace, task: str) -> int:
    """``retain tune STORE`` on a store whose model writes its answers: the learning rate, LoRA rank and
    strategy knobs on the rows it holds (:mod:`retain.tuning.answers`)."""
    from retain.tuning import TuneError
    from retain.tuning.answers import tune_answers_store

    with reported(TuneError, user=True):
        if args.workers != 1 or args.worker is not None or args.no_final:
            raise TuneError(f"a {task} store is tuned by one process, with its test comparison: leave out "
                            "--workers and --no-final")
        out = Path(args.out or Path(args.source).parent / f"{Path(args.source).name}-tune")
        row = tune_answers_store(args.source, out, trials=args.trials or 8, storage=args.storage,
                                 progress=not args.quiet)
        d, t = row["test_default"]["acc"], row["test_tuned"]["acc"]
        best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["best_params"].items())
        print(f"{row['method']}: validation {row['metric']} {100 * row['best_validation']['accuracy']:.1f} with "
              f"{best}; test {100 * d:.1f} default -> {100 * t:.1f} tuned")
        print(f"best config: {out / 'best.yaml'}\nreport: {out / 'report.md'}")
        if args.apply:
            _apply_answers(args.source, row, out)
    return 0


def _apply_answers(store: str, row: dict[str, Any], out: Path) -> None:
    """``--apply`` after :func:`_tune_answers`: the tuned learning rate and strategy knobs become the store's
    if they beat its own on the held-out test rows; its model (adaptation, LoRA rank) stays as its versions
    were made."""
    from retain.loop import Project

    metric, d, t = row["metric"], row["test_default"]["acc"], row["test_tuned"]["acc"]
    if t <= d:
        print(f"not applied: the tuned knobs scored {metric} {100 * t:.1f} on the held-out test rows, the store's "
              f"own {100 * d:.1f}")
        return
    project = Project(store)
    best = project.kind.read_config(out / row["best_config"]).model_copy(update={"model": project.config.model})
    project.retune(best, f"retain tune: {row['best_params']} ({metric} {100 * d:.1f} -> {100 * t:.1f} on held-out "
                         f"test rows); report {out / 'report.md'}")
    print(f"applied: the next update of {store} trains with the tuned lr and strategy knobs")
