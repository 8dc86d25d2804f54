"""Optuna studies over a method's knobs, honest to the continual protocol.

A trial trains the method experience by experience on each experience's training rows less a
validation slice, and is scored on those slices: after each experience, the mean accuracy over
every experience's slice (0 for the ones not learned yet), which a pruner reads to stop a trial
that trails, and which at the end is the average accuracy of the stream. The test sets
are not part of the stream a trial sees; only the final report (``retain.tuning.report``) reads
them, once, for the default and the best configurations.

Studies live in an Optuna RDB storage: a SQLite file in the output folder by default, or a
PostgreSQL database (``--storage postgresql://...``) that workers on other hosts join. Workers
are processes running this same command; each pulls trials from the shared study until the
budget is spent. A study that was interrupted resumes where it stopped: finished trials count,
and a trial whose worker died is marked failed once its heartbeat is stale.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from optuna.trial import TrialState
from tqdm.auto import tqdm

from retain.build import build_learner, build_stream
from retain.config import MethodConfig, RunConfig
from retain.data import Experience, Stream, split_held_out
from retain.engine.learner import Diverged
from retain.engine.protocol import Trained, train_and_score
from retain.extras import require_extra
from retain.tuning.space import Knob, config_yaml, configured, knobs

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and the report say what matters

DIRECTIONS: dict[str, Literal["maximize", "minimize"]] = {
    "accuracy": "maximize", "train_seconds": "minimize", "peak_mb": "minimize"}
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # what spends the trial budget
HEARTBEAT = 2  # seconds between a running trial's signs of life; stale after GRACE (longer than
GRACE = 120  # a worker may wait for SQLite's lock, 60 s, so a live worker is never taken for dead)


def validation_stream(stream: Stream, fraction: float, seed: int) -> Stream:
    """The stream trials see: each experience trains on its training rows less a validation slice
    and is judged on that slice. The test splits are not in it.

    Args:
        stream: the stream a config builds, test splits included.
        fraction: the share of each experience's training rows held out for validation, 0-1.
        seed: seeds the split (each experience adds its id).

    Returns:
        The stream of training rows and validation slices.
    """
    experiences = []
    for e in stream:
        kept, held = split_held_out(e.y_train, fraction, seed + e.id)
        t = e.train_tasks()
        experiences.append(Experience(e.x_train[kept], e.y_train[kept], e.x_train[held], e.y_train[held], id=e.id,
                                      task=e.task, classes=e.classes, t_train=t[kept], t_test=t[held],
                                      scenario=e.scenario, metadata={"validation_of": e.id}))
    return Stream(experiences, stream.n_classes, name=f"{stream.name} (validation slices)",
                  scenario=stream.scenario, class_names=stream.class_names, metadata=dict(stream.metadata))


def storage_url(storage: str | None, out: Path) -> str:
    """The database URL of ``--storage``: a URL as given (``postgresql://`` uses psycopg 3), a
    file path as SQLite, or by default ``study.db`` in the output folder.

    Args:
        storage: what ``--storage`` gave: a URL, a file path, or None.
        out: the study's output folder.

    Returns:
        The SQLAlchemy URL of the study database.

    Raises:
        MissingExtra: a PostgreSQL URL without the ``postgres`` extra installed.

    >>> storage_url("postgresql://tuner@db-host/studies", Path("out"))
    'postgresql+psycopg://tuner@db-host/studies'
    >>> storage_url(None, Path("/runs/x-tune"))
    'sqlite:////runs/x-tune/study.db'
    """
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).resolve()}"
    if storage.startswith("postgresql://"):
        require_extra("postgres", "psycopg")
        return "postgresql+psycopg://" + storage.removeprefix("postgresql://")
    return storage


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study database, with heartbeats so a dead worker's trial is failed, not left running."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT,
                                                  grace_period=GRACE)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's and the driver's errors, named for the user
            race = ("constraint", "already exists")  # another process made the tables meanwhile
            if attempt < 4 and any(word in str(err).lower() for word in race):
                time.sleep(0.5)
                continue
            raise TuneError(f"cannot open the study storage {url.split('@')[-1]}: "
                            f"{str(err).splitlines()[0]}") from None
    raise AssertionError("unreachable")


class TuneError(ValueError):
    """A study cannot run as asked; the message says why."""


@dataclass
class Source:
    """What a study tunes: a config and the stream it builds, from a config file or a model store
    (``path``: what worker processes re-read).

    Attributes:
        cfg: the run config whose methods are tuned.
        path: the config file or the store's folder, which worker processes read again.
        kind: ``config`` or ``store``.
    """

    cfg: RunConfig
    path: str
    kind: str = "config"  # or "store"
    _stream: Stream | None = field(default=None, repr=False)

    @classmethod
    def config(cls, cfg: RunConfig, out: Path) -> Source:
        """A config; written to ``out/config.yaml`` for the workers.

        Args:
            cfg: the run config.
            out: the study's output folder.

        Returns:
            The source, its ``path`` the written file.
        """
        out.mkdir(parents=True, exist_ok=True)
        path = out / "config.yaml"
        raw = cfg.model_dump(mode="json")
        raw["strategies"] = [m.model_dump(mode="json") for m in cfg.strategies]
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return cls(cfg, str(path))

    def stream(self, progress: bool = False) -> Stream:
        """The whole stream, test splits included (the trials get :func:`validation_stream`).

        Args:
            progress: show progress bars while a data set is read (the first call only).

        Returns:
            The stream, built once.
        """
        if self._stream is None:
            self._stream = build_stream(self.cfg, progress=progress)
        return self._stream


def study_name(cfg: RunConfig, method: MethodConfig) -> str:
    return f"{cfg.name}.{method.label}"


def create_studies(source: Source, url: str) -> dict[str, optuna.Study]:
    """One study per method of the config, created (or found, resuming) in the storage."""
    if source.cfg.mode != ["offline"]:
        raise TuneError(f"mode {source.cfg.mode}: trials train offline, experience by experience; tune with "
                        "mode: offline")
    storage = open_storage(url)
    tune = source.cfg.tune
    studies = {}
    for method in source.cfg.strategies:
        directions = [DIRECTIONS[o] for o in tune.objectives]
        try:
            study = optuna.create_study(storage=storage, study_name=study_name(source.cfg, method),
                                        directions=directions, load_if_exists=True)
        except ValueError as err:
            raise TuneError(f"study {study_name(source.cfg, method)}: {err}") from None
        if [d.name.lower() for d in study.directions] != directions:
            raise TuneError(f"study {study.study_name} in the storage optimises {study.directions}, not "
                            f"{tune.objectives}: use another --out or --storage")
        found = knobs(source.cfg, method)
        made_by = fingerprint(source.cfg, method)
        if study.user_attrs.get("config", made_by) != made_by:
            raise TuneError(f"study {study.study_name} in this storage was made by another config (its data, model, "
                            "method, search or trial settings differ); pass another --out or --storage to start anew")
        study.set_user_attr("config", made_by)
        if tune.start_from_defaults and not study.trials:  # before any worker starts: trial 0 is the config's own
            study.enqueue_trial({k.key: k.default for k in found if k.holds(k.default)}, skip_if_exists=True)
        studies[method.label] = study
    return studies


def fingerprint(cfg: RunConfig, method: MethodConfig) -> str:
    """What a study's trials depend on (not the trial budget or the final seeds), as a digest."""
    tune = cfg.tune.model_dump(mode="json", exclude={"trials", "final_seeds"})
    raw = {"scenario": cfg.scenario.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json"),
           "training": cfg.training.model_dump(mode="json", exclude={"threads", "device"}),
           "method": method.model_dump(mode="json"), "tune": tune}
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


class Objective:
    """A trial: the method with the trial's knob values, trained experience by experience on the
    validation stream; returns the objectives (accuracy: mean over every experience's slice)."""

    def __init__(self, cfg: RunConfig, method: MethodConfig, stream: Stream) -> None:
        self.cfg, self.method, self.stream = cfg, method, stream
        self.knobs: list[Knob] = knobs(cfg, method)
        self.objectives = cfg.tune.objectives

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        values = {k.key: k.suggest(trial) for k in self.knobs}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        run = configured(self.cfg, self.method, values)
        method = run.strategies[0]
        # One learner per trial seed, trained in step so each experience's score is their mean.
        learners = [build_learner(self.stream, run, method, seed) for seed in self.cfg.tune.trial_seeds]
        chunks = [self.stream.merged()] if method.whole_stream else list(self.stream)
        experiences, learned = self.stream.experiences, [0]
        single = len(self.objectives) == 1

        def score(learner: Any) -> list[float]:
            # Over every experience's slice, the ones not learned yet scoring 0: a curve that rises as
            # experiences are learned and ends at the objective, so a pruner's "best so far" is its
            # latest point (the mean over the seen ones alone falls as the stream grows).
            seen = experiences if method.whole_stream else experiences[:learned[0] + 1]
            scores: list[float] = learner.evaluate(seen)
            return scores + [0.0] * (len(experiences) - len(seen))

        def report(i: int, so_far: Trained) -> None:
            learned[0] = i + 1
            if single and self.cfg.tune.pruner != "none":
                accuracy = sum(so_far.rows[-1]) / len(experiences)
                trial.report(accuracy, i)
                if trial.should_prune():
                    trial.set_user_attr("train_seconds", sum(so_far.seconds))
                    raise optuna.TrialPruned(f"accuracy {accuracy:.3f} after experience {i}")

        try:
            trained = train_and_score(learners, chunks, score, report)
        except Diverged as err:
            trial.set_user_attr("diverged", str(err))
            return self._values(0.0, math.inf, math.inf)
        seconds, peak = sum(trained.seconds), max(trained.peaks)
        trial.set_user_attr("train_seconds", seconds)
        trial.set_user_attr("peak_mb", peak)
        return self._values(sum(trained.rows[-1]) / len(experiences), seconds, peak)

    def _values(self, accuracy: float, seconds: float, peak: float) -> float | tuple[float, ...]:
        found = {"accuracy": accuracy, "train_seconds": seconds, "peak_mb": peak}
        values = tuple(found[o] for o in self.objectives)
        return values[0] if len(values) == 1 else values


def _sampler(cfg: RunConfig, worker: int) -> optuna.samplers.BaseSampler:
    seed = cfg.tune.seed + 1000 * worker  # workers draw different random start-up trials
    if cfg.tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(4, cfg.tune.trials // 4))


def _pruner(cfg: RunConfig, n_experiences: int) -> optuna.pruners.BasePruner:
    if cfg.tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, n_experiences))
    # From the second experience on: the first says little of forgetting. Finished trials are the ones
    # that were not pruned, so the bar rises as the study goes; the first third of the budget finishes
    # whole to set it. Even so, 24-trial studies in benchmarks/tune.py finished 6 or 7 trials a method
    # (the median: 4), so small budgets may do better with pruner: none.
    if cfg.tune.pruner == "quartile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=max(5, cfg.tune.trials // 3),
                                               n_warmup_steps=1)
    if cfg.tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def optimize(source: Source, url: str, worker: int = 0, tick: Callable[[], object] = lambda: None) -> None:
    """Run trials of every method's study until its budget (``tune.trials`` finished or pruned
    trials, those of earlier runs and other workers included) is spent.

    Args:
        source: what the studies tune.
        url: the study database's URL (:func:`storage_url`).
        worker: this worker's number (0: the one that takes the enqueued first trials).
        tick: called after each trial (a progress bar's update).
    """
    cfg = source.cfg
    stream = validation_stream(source.stream(), cfg.tune.validation_fraction, cfg.tune.seed)
    storage = open_storage(url)
    for method in cfg.strategies:
        study = optuna.load_study(study_name=study_name(cfg, method), storage=storage,
                                  sampler=_sampler(cfg, worker), pruner=_pruner(cfg, len(stream)))
        objective = Objective(cfg, method, stream)
        if worker:
            _after_enqueued(study)
        # One trial at a time while the budget lasts: finished and pruned trials of every worker (and
        # of earlier runs) count, so each worker stops when the study has them all; two workers
        # finishing their last trials at once may overshoot by one trial each.
        while counted(study) < cfg.tune.trials:
            study.optimize(objective, n_trials=1, catch=())
            tick()


def _after_enqueued(study: optuna.Study, patience: float = 60.0) -> None:
    """Wait (at most ``patience`` seconds) until worker 0 has taken the enqueued trials: on SQLite two workers
    may pop the same waiting trial (its row lock is a no-op there), and the second to finish it fails."""
    until = time.monotonic() + patience
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)) and time.monotonic() < until:
        time.sleep(0.2)


def run_workers(source: Source, url: str, out: Path, workers: int, progress: bool) -> None:
    """Tune every method of ``source`` with ``workers`` processes on the shared study (one: in
    this process), with a progress bar counting finished trials of every study."""
    studies = create_studies(source, url)
    total = source.cfg.tune.trials * len(studies)

    def done() -> int:
        return sum(min(counted(s), source.cfg.tune.trials) for s in studies.values())

    with tqdm(total=total, initial=done(), disable=not progress, unit="trial", desc=f"tune {source.cfg.name}") as bar:
        if workers == 1:
            optimize(source, url, tick=lambda: bar.update(done() - bar.n))
            return
        threads = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1) // workers)
        command = [sys.executable, "-m", "retain", "tune", source.path, "--out", str(out), "--storage", url,
                   "--workers", str(workers), "--threads", str(threads), "--trials", str(source.cfg.tune.trials),
                   "--quiet", "--worker"]
        procs = [subprocess.Popen([*command, str(i)]) for i in range(workers)]
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                bar.update(done() - bar.n)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                p.wait()
        bar.update(done() - bar.n)
        failed = [i for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            raise TuneError(f"tuning worker(s) {failed} stopped with an error (see above); run the same command "
                            "again to resume the study")


def best_config_yaml(source: Source, method: MethodConfig, values: dict[str, Any], note: str) -> str:
    return config_yaml(configured(source.cfg, method, values), note)
