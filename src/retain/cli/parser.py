"""The ``retain`` argument parser: every command, its arguments and its handler."""

from __future__ import annotations

import argparse

from retain import __version__
from retain.cli import export, run, serve, store, strategies, tune


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The parser; each command's ``func`` takes the parsed arguments and returns the exit code."""
    parser = argparse.ArgumentParser(prog="retain", description="Incremental learning without forgetting.")
    parser.add_argument("--version", action="version", version=f"retain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_export(sub)
    _add_store(sub)
    _add_serve(sub)
    _add_tune(sub)
    listing = sub.add_parser("strategies", help="list every method: family, scenarios, defaults, paper")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=strategies.strategies)
    return parser


def _add_run(sub) -> None:
    running = sub.add_parser("run", help="run a YAML config and write a report folder")
    running.add_argument("config", help="YAML run config (see examples/)")
    running.add_argument("--out", help="run folder (default: <output>/<name>-<timestamp>)")
    running.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    running.add_argument("--quiet", action="store_true", help="no progress bars or table, only the report path")
    running.add_argument("--resume", action="store_true",
                         help="finish an interrupted run (--out, or the newest of its name): methods done are kept")
    running.add_argument("--nproc", type=_positive, default=1, help="train on N processes (torchrun, DDP: gloo on "
                         "the CPU, NCCL on GPUs), each a share of every global batch")
    running.set_defaults(func=run.run)
    select = sub.add_parser("select", help="model selection: compare backbones and adaptation modes on a config")
    select.add_argument("config", help="YAML run config (its scenario and strategies are used)")
    select.add_argument("--backbone", action="append", help="backbone to compare (repeat; default: the config's)")
    select.add_argument("--adaptation", default="frozen,lora,full", help="comma-separated: frozen, lora, full")
    select.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    select.add_argument("--out", help="write the rows as JSON to this file")
    select.add_argument("--quiet", action="store_true", help="no progress bars")
    select.set_defaults(func=run.select)


def _add_export(sub) -> None:
    from retain.data.datasets import DATASETS
    from retain.data.export import FORMATS

    exporting = sub.add_parser("export", help="write a built-in data set as files (tables, images, WAV, npz), "
                               "one folder per batch, as a user would bring them")
    exporting.add_argument("dataset", choices=[*DATASETS, "translations"],
                           help="a built-in data set, or translations: Debian's catalogues as a parallel corpus")
    exporting.add_argument("folder", help="a new or empty folder")
    exporting.add_argument("--format", required=True, choices=FORMATS)
    exporting.add_argument("--kind", default="class_incremental", choices=["class_incremental", "task_incremental"])
    exporting.add_argument("--experiences", type=int, default=5, help="batches to cut the stream into")
    exporting.add_argument("--test-fraction", type=_fraction, default=0.3, help="share of each class kept for test")
    exporting.add_argument("--split-seed", type=int, default=0)
    exporting.add_argument("--max-train-per-class", type=_positive, help="keep at most this many (default: all; "
                           "translations: pairs per direction, the only options they take with --format)")
    exporting.add_argument("--max-test-per-class", type=_positive, help="keep at most this many (default: all)")
    exporting.set_defaults(func=export.export)


def _add_store(sub) -> None:
    init = sub.add_parser("init", help="a new model store: version 1 trained on a first batch of your data")
    init.add_argument("config", help="YAML config: model, training, strategies (the first is used), promotion")
    init.add_argument("--data", required=True, help="a table, .npz, or folder of class folders (a translation "
                      "config: JSON Lines of source, target and lang, as retain export translations writes)")
    init.add_argument("--store", required=True, help="a new or empty folder")
    init.add_argument("--held-out", type=float, default=0.2, help="fraction of each batch kept to judge versions")
    init.add_argument("--database", help="SQLAlchemy URL of an empty database for the store's records "
                      "(postgresql://user@host/db; default: SQLite in the store's folder)")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=store.init, seeds=None)
    update = sub.add_parser("update", help="learn a new batch: a candidate, judged on every batch, promoted or kept")
    update.add_argument("store")
    update.add_argument("--data", required=True)
    update.add_argument("--json", action="store_true")
    update.set_defaults(func=store.update)
    versions = sub.add_parser("versions", help="the store's versions: parent, data, accuracy, decision")
    versions.add_argument("store")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(func=store.versions)
    rollback = sub.add_parser("rollback", help="serve another version: by default the promoted one's parent; "
                              "any version may be named, a kept candidate too")
    rollback.add_argument("store")
    rollback.add_argument("version", type=int, nargs="?")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=store.rollback)
    diff = sub.add_parser("diff", help="accuracy change between two versions, per batch and per class")
    diff.add_argument("store")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=store.diff)
    predict = sub.add_parser("predict", help="labels a version predicts for a file or folder, labelled or not, "
                             "with top-k probabilities")
    predict.add_argument("store")
    predict.add_argument("--data", required=True, help="(a saved translation model: JSON Lines of {source, lang}) "
                         "a table (no label column needed), .npz, or a folder or "
                         "file of images or WAV clips")
    predict.add_argument("--top-k", type=int, default=1, help="labels per row with their probabilities")
    predict.add_argument("--version", type=int, help="default: the promoted version")
    predict.add_argument("--out", help="write the predictions to this .csv or .jsonl file")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--lang", help="a saved translation model: the target language of rows that name none")
    predict.set_defaults(func=store.predict)
    evaluate = sub.add_parser("evaluate", help="accuracy of a version on a labelled file or folder, per class")
    evaluate.add_argument("store")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--version", type=int, help="default: the promoted version")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=store.evaluate)


def _add_serve(sub) -> None:
    serving = sub.add_parser("serve", help="serve a store over HTTP: predict, feedback, automatic updates, "
                             "metrics and a live dashboard")
    serving.add_argument("store")
    serving.add_argument("--config", help="YAML with a service: section (token, limits, update triggers)")
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument("--workers", type=int, default=1, help="worker processes (one of them holds the updater)")
    serving.add_argument("--no-updater", action="store_true", help="predict and take feedback only; another "
                         "process updates")
    serving.add_argument("--log-level", default="warning")
    serving.set_defaults(func=serve.serve)


def _add_tune(sub) -> None:
    tuning = sub.add_parser("tune", help="tune each method's knobs (Optuna) on validation slices, then compare "
                            "default and tuned configs on the test sets")
    tuning.add_argument("source", help="YAML run config (its tune: section and strategies' search:), or a model "
                        "store (tunes its config on the batches it holds)")
    tuning.add_argument("--out", help="report folder; also holds the study (default: <output>/<name>-tune); "
                        "a study found there resumes")
    tuning.add_argument("--workers", type=_positive, default=1, help="processes sharing the study")
    tuning.add_argument("--storage", help="study database: a SQLite file, or postgresql://user@host/db for "
                        "workers on several hosts (default: <out>/study.db)")
    tuning.add_argument("--trials", type=_positive, help="override tune.trials")
    tuning.add_argument("--no-final", action="store_true", help="skip the test-set comparison of the best configs")
    tuning.add_argument("--apply", action="store_true", help="a store: make the tuned knobs its own (its next "
                        "updates train with them) if they beat its current ones on the test rows")
    tuning.add_argument("--quiet", action="store_true")
    tuning.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    tuning.add_argument("--threads", type=_positive, default=1, help=argparse.SUPPRESS)
    tuning.set_defaults(func=tune.tune)
