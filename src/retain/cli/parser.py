"""The ``retain`` argument parser: every command, its arguments and its handler.

Building it imports nothing heavy (no torch, pandas or scikit-learn): ``retain --version`` and the
commands that read a store's records answer at once; each handler imports what it needs. A new
command is one ``_add_<name>(sub)`` function called from :func:`build_parser`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

from retain import __version__
from retain.cli import export, export_model, review, run, serve, store, strategies, tune

MAX_VERSION = 2**31 - 1  # the largest id a store's database keeps (PostgreSQL's INTEGER)
MAX_HELD_OUT = 0.5  # of each batch: the rest, at least as many rows, trains


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


def _held_out(text: str) -> float:
    """``--held-out``: a share of each batch, leaving rows to train on."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction (e.g. 0.2)") from None
    if not 0 < value <= MAX_HELD_OUT:
        raise argparse.ArgumentTypeError(f"{text} would leave too few rows to train on: give a share of each batch "
                                         f"above 0 and at most {MAX_HELD_OUT} (default 0.2)")
    return value


def _version(text: str) -> int:
    """A version number, as the store numbers them (1, 2, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (1, 2, ...)") from None
    if not 1 <= value <= MAX_VERSION:
        raise argparse.ArgumentTypeError(f"{text} is not a version number: versions run from 1 to {MAX_VERSION}")
    return value


class _Later:
    """Choices read when a command is parsed or its help shown, not when the parser is built (they
    live in modules that import torch)."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load = load

    def __contains__(self, value: object) -> bool:
        return value in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())


def _datasets() -> list[str]:
    from retain.data.datasets import DATASETS

    return [*DATASETS, "translations"]


def _formats() -> list[str]:
    from retain.data.export import FORMATS

    return list(FORMATS)


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


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    running = sub.add_parser("run", help="run a YAML config and write a report folder")
    running.add_argument("config", help="YAML run config (see examples/)")
    running.add_argument("--out", help="run folder (default: <output>/<name>-<timestamp>)")
    running.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    running.add_argument("--quiet", action="store_true", help="no progress bars or table, only the report path")
    running.add_argument("--resume", action="store_true",
                         help="finish an interrupted run (--out, or the newest of its name): methods done are kept")
    running.add_argument("--nproc", type=_positive, default=1, help="train on N processes (torchrun, DDP: gloo on "
                         "the CPU, NCCL on GPUs), each a share of every global batch (default: %(default)s)")
    running.set_defaults(func=run.run)
    select = sub.add_parser("select", help="model selection: compare backbones and adaptation modes on a config")
    select.add_argument("config", help="YAML run config (its scenario and strategies are used)")
    select.add_argument("--backbone", action="append", help="backbone to compare (repeat; default: the config's)")
    select.add_argument("--adaptation", default="frozen,lora,full", help="comma-separated: frozen, lora, full "
                        "(default: %(default)s)")
    select.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    select.add_argument("--out", help="write the rows as JSON to this file")
    select.add_argument("--quiet", action="store_true", help="no progress bars")
    select.set_defaults(func=run.select)


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exporting = sub.add_parser("export", help="write a built-in data set as files (tables, images, WAV, npz), "
                               "one folder per batch, as a user would bring them")
    exporting.add_argument("dataset", choices=_Later(_datasets), metavar="DATASET",
                           help="a built-in data set (%(choices)s; translations: Debian's catalogues as a parallel "
                           "corpus)")
    exporting.add_argument("folder", help="a new or empty folder")
    exporting.add_argument("--format", required=True, choices=_Later(_formats), metavar="FORMAT",
                           help="%(choices)s")
    exporting.add_argument("--kind", default="class_incremental", choices=["class_incremental", "task_incremental"],
                           help="(default: %(default)s)")
    exporting.add_argument("--experiences", type=int, default=5, help="batches to cut the stream into (default: "
                           "%(default)s)")
    exporting.add_argument("--test-fraction", type=_fraction, default=0.3, help="share of each class kept for test "
                           "(default: %(default)s)")
    exporting.add_argument("--split-seed", type=int, default=0, help="(default: %(default)s)")
    exporting.add_argument("--max-train-per-class", type=_positive, help="keep at most this many (default: all; "
                           "translations: pairs per direction, the only options they take with --format)")
    exporting.add_argument("--max-test-per-class", type=_positive, help="keep at most this many (default: all)")
    exporting.set_defaults(func=export.export)


DATA_HELP = ("one batch: a table (.csv, .tsv, .jsonl, .parquet), an .npz file, a folder of x.npy and y.npy, "
             "a datasets folder, or a folder of class folders of images or WAV clips; a batch folder holding "
             "train and test (as retain export writes) is given by its train part, e.g. batches/00/train.csv "
             "(a translation config: JSON Lines of source, target and lang)")


def _add_store(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = sub.add_parser("init", help="a new model store: version 1 trained on a first batch of your data")
    init.add_argument("config", help="YAML config: model, training, strategies (the first is used), promotion")
    init.add_argument("--data", required=True, help=DATA_HELP)
    init.add_argument("--store", required=True, help="a new or empty folder")
    init.add_argument("--held-out", type=_held_out, default=0.2, metavar="FRACTION", help="share of each class of "
                      f"every batch kept aside to judge versions, above 0 and at most {MAX_HELD_OUT} "
                      "(default: %(default)s)")
    init.add_argument("--database", help="SQLAlchemy URL of an empty database for the store's records "
                      "(postgresql://user@host/db; default: SQLite in the store's folder)")
    init.add_argument("--restart", action="store_true", help="remove what an interrupted or failed init left in "
                      "--store or --database (a store without any version) and start again")
    _add_progress(init)
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=store.init, seeds=None)
    update = sub.add_parser("update", help="learn a new batch: a candidate, judged on every batch, promoted or kept")
    update.add_argument("store")
    learned = update.add_mutually_exclusive_group(required=True)
    learned.add_argument("--data", help=DATA_HELP)
    learned.add_argument("--retry", nargs="+", metavar="BATCH", help="learn again batches whose candidates were "
                         "kept (retain status lists them: pending, held or dropped) on the served line")
    _add_progress(update)
    update.add_argument("--json", action="store_true")
    update.set_defaults(func=store.update)
    versions = sub.add_parser("versions", help="the store's versions: when made, from what data, the gate's "
                              "result, held-out scores, the rule's decision, and which one is served now")
    versions.add_argument("store")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(func=store.versions)
    rollback = sub.add_parser("rollback", help="serve another version: by default the promoted one's parent; "
                              "any version may be named, a kept candidate too")
    rollback.add_argument("store")
    rollback.add_argument("version", type=_version, nargs="?")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=store.rollback)
    diff = sub.add_parser("diff", help="accuracy change between two versions, per batch and per class")
    diff.add_argument("store")
    diff.add_argument("a", type=_version)
    diff.add_argument("b", type=_version)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=store.diff)
    predict = sub.add_parser("predict", help="labels a version predicts for a file or folder, labelled or not, "
                             "with top-k probabilities")
    predict.add_argument("store")
    predict.add_argument("--data", required=True, help="(a saved translation model: JSON Lines of {source, lang}) "
                         "a table (no label column needed), .npz, or a folder or "
                         "file of images or WAV clips")
    predict.add_argument("--top-k", type=int, default=1, help="labels per row with their probabilities (default: "
                         "%(default)s)")
    predict.add_argument("--version", type=_version, help="default: the promoted version")
    predict.add_argument("--out", help="write the predictions to this .csv or .jsonl file: each row's number (a "
                         "table's line) or file, its input columns, then the labels")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--lang", help="a saved translation model: the target language of rows that name none")
    predict.set_defaults(func=store.predict)
    evaluate = sub.add_parser("evaluate", help="accuracy of a version on a labelled file or folder, per class")
    evaluate.add_argument("store")
    evaluate.add_argument("--data", required=True, help="labelled rows, in a form --data of retain init takes")
    evaluate.add_argument("--version", type=_version, help="default: the promoted version")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=store.evaluate)
    status = sub.add_parser("status", help="the version served, the batches it has not learned (kept with a "
                            "candidate: pending, held or dropped), the rows quarantined, the feedback")
    status.add_argument("store")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=review.status)
    quarantine = sub.add_parser("quarantine", help="review the rows the gate set aside: list them as they came, "
                                "release them (the next update learns them) or drop them (with a record)")
    quarantine.add_argument("action", choices=["list", "release", "drop"])
    quarantine.add_argument("store")
    quarantine.add_argument("name", nargs="?", help="release, drop: the quarantined rows' name (as list shows it)")
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(func=review.quarantine)
    exporting = sub.add_parser("export-model", help="write a version as one file that predicts from raw inputs "
                               "with only torch (TorchScript) or only onnxruntime (ONNX), its encoder and label "
                               "names inside")
    exporting.add_argument("store")
    exporting.add_argument("--version", type=_version, help="default: the promoted version")
    exporting.add_argument("--format", required=True, choices=["torchscript", "onnx"], help=export_model.FORMAT_HELP)
    exporting.add_argument("--out", required=True, help="the file to write (e.g. model.pt, model.onnx)")
    exporting.set_defaults(func=export_model.export_model)


def _add_progress(command: argparse.ArgumentParser) -> None:
    command.add_argument("--progress", action="store_true", help="progress lines for reading, the gate and "
                         "training on stderr even when it is not a terminal (on a terminal they are always shown)")


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serving = sub.add_parser("serve", help="serve a store over HTTP: predict, feedback, automatic updates, "
                             "metrics and a live dashboard")
    serving.add_argument("store")
    serving.add_argument("--config", help="YAML with a service: section (token, limits, update triggers)")
    serving.add_argument("--host", default="127.0.0.1")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument("--workers", type=int, default=1, help="worker processes (one of them holds the updater)")
    serving.add_argument("--no-updater", action="store_true", help="predict and take feedback only; another "
                         "process updates")
    serving.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"],
                         help="the service's and uvicorn's log lines on stderr from this level up (default: info: "
                         "start-up, updates, lease waits, model swaps)")
    serving.add_argument("--access-log", action="store_true", help="a log line for each request: method, path, "
                         "status, milliseconds")
    serving.set_defaults(func=serve.serve)


def _add_tune(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
