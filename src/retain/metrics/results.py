"""What a run measured, typed: per seed, per method, per experiment, and online runs; JSON out and back.

``ExperimentResult.to_dict()`` is the ``results.json`` a report folder holds (a float that is not
finite, such as forgetting of a model trained once on everything, is written as ``null``), and
``ExperimentResult.from_dict`` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from retain.metrics.accuracy import accuracy_curve

SCALARS = ("acc", "stream_acc", "forgetting", "bwt", "fwt", "train_seconds", "peak_mb", "gradient_steps",
           "samples_per_second")


@dataclass
class Consolidation:
    """One consolidation of a hybrid run: what fired it, when, what it cost, and the accuracy around it.

    Attributes:
        trigger: what fired it: ``new_class``, ``drift`` or ``schedule``.
        at_sample: labelled samples learned when it ran.
        seconds: its wall time.
        gradient_steps: the steps it took.
        samples: the rows it trained on (memory and recent window).
        anytime_before: anytime accuracy just before it, 0-1; None: not measured.
        anytime_after: anytime accuracy just after it, 0-1; None: not measured.
    """

    trigger: str
    at_sample: int
    seconds: float
    gradient_steps: int
    samples: int
    anytime_before: float | None = None
    anytime_after: float | None = None


@dataclass
class OnlineResult:
    """What an online or hybrid pass over a stream measured (``retain.engine.run_online``).

    Attributes:
        matrix: accuracy on every experience's test set at each experience boundary, 0-1.
        prequential_acc: accuracy on each batch predicted before it is learned, 0-1.
        prequential: (samples, prequential accuracy so far), at most about 200 points.
        anytime: (samples, accuracy on the test samples of the classes seen so far).
        consolidations: every consolidation of a hybrid run, in order.
        gradient_steps: the learner's gradient steps at the end.
        samples: labelled samples learned.
        seconds: wall time of the whole pass, evaluation included.
        samples_per_second: samples over ``seconds``.
        update_samples_per_second: samples over the online updates' time alone.
        p50_ms: median latency of an online update, in milliseconds.
        p99_ms: 99th percentile of that latency, in milliseconds.
    """

    matrix: list[list[float]]  # accuracy on every experience's test set at each experience boundary
    prequential_acc: float  # each batch predicted before it is learned
    prequential: list[tuple[int, float]]  # (samples, prequential accuracy so far), at most ~200 points
    anytime: list[tuple[int, float]]  # (samples, accuracy on the test samples of the classes seen so far)
    consolidations: list[Consolidation]
    gradient_steps: int
    samples: int
    seconds: float
    samples_per_second: float
    update_samples_per_second: float  # counting the online updates' time only
    p50_ms: float  # online update latency percentiles
    p99_ms: float


@dataclass
class Metrics:
    """One seed's numbers (or their mean over seeds): accuracy-matrix metrics and costs.

    Accuracies are 0-1; a metric that needs more experiences than the run had is ``nan``.

    Attributes:
        acc: final accuracy averaged over experiences (:func:`~retain.metrics.average_accuracy`).
        stream_acc: final accuracy over all test samples (:func:`~retain.metrics.stream_accuracy`).
        forgetting: average forgetting (:func:`~retain.metrics.forgetting`).
        bwt: backward transfer (:func:`~retain.metrics.bwt`).
        fwt: forward transfer (:func:`~retain.metrics.fwt`).
        train_seconds: wall time of training.
        peak_mb: peak memory while training, in MiB.
        gradient_steps: optimizer steps taken.
        samples_per_second: training samples over ``train_seconds``.
        update_seconds: offline: mean time of an experience after the first; None: not measured.
        trainable_parameters: parameters the optimizer steps; None: not counted.
        prequential_acc: online and hybrid runs: accuracy on each batch before it is learned.
        update_samples_per_second: online and hybrid runs: samples over the online updates' time.
        p50_ms: online and hybrid runs: median update latency, in milliseconds.
        p99_ms: online and hybrid runs: 99th percentile update latency, in milliseconds.
    """

    acc: float
    stream_acc: float
    forgetting: float
    bwt: float
    fwt: float
    train_seconds: float
    peak_mb: float
    gradient_steps: float
    samples_per_second: float
    update_seconds: float | None = None  # offline: mean time of an experience after the first
    trainable_parameters: float | None = None
    prequential_acc: float | None = None  # online and hybrid runs
    update_samples_per_second: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class SeedRun:
    """One method trained with one seed.

    Attributes:
        seed: the seed.
        matrix: the accuracy matrix, ``R[i][j]`` on experience ``j`` after training experience ``i``, 0-1.
        untrained: the untrained model's accuracy on each experience, 0-1.
        metrics: the numbers derived from them and the costs.
        steps: gradient steps taken.
        train_seconds_per_experience: training time of each experience.
        peak_mb_per_experience: peak memory of each experience, in MiB.
        online: what an online or hybrid run measured; None for offline runs.
    """

    seed: int
    matrix: list[list[float]]
    untrained: list[float]
    metrics: Metrics
    steps: int
    train_seconds_per_experience: list[float] = field(default_factory=list)
    peak_mb_per_experience: list[float] = field(default_factory=list)
    online: OnlineResult | None = None


@dataclass
class Summary:
    """A method over its seeds: mean and standard deviation of every metric, the mean matrix and
    curve, and, for online runs, the first seed's curves and consolidations.

    Attributes:
        mean: every metric's mean over the seeds.
        std: every metric's standard deviation over the seeds (0 with one seed).
        matrix: the mean accuracy matrix.
        curve: average accuracy over the experiences seen so far, after each.
        prequential_curve: online runs: the first seed's (samples, prequential accuracy); None offline.
        anytime_curve: online runs: the first seed's (samples, anytime accuracy); None offline.
        consolidations: hybrid runs: the first seed's consolidations; None offline.
    """

    mean: Metrics
    std: Metrics
    matrix: list[list[float]]
    curve: list[float]  # average accuracy over the experiences seen so far, after each
    prequential_curve: list[tuple[int, float]] | None = None
    anytime_curve: list[tuple[int, float]] | None = None
    consolidations: list[Consolidation] | None = None

    @classmethod
    def of(cls, runs: list[SeedRun]) -> Summary:
        """Aggregate seeds: optional metrics are averaged when the runs have them.

        Args:
            runs: one run per seed, of one method.

        Returns:
            Their summary.
        """
        def stat(fn: Any, name: str) -> float | None:
            values = [getattr(r.metrics, name) for r in runs]
            if any(v is None for v in values):
                return None
            return float(fn(np.array(values, dtype=float)))

        names = [f.name for f in fields(Metrics)]
        mean = _metrics({k: stat(np.mean, k) for k in names})
        std = _metrics({k: (stat(np.std, k) if len(runs) > 1 else 0.0) if getattr(mean, k) is not None else None
                        for k in names})
        matrix = np.mean([np.asarray(r.matrix) for r in runs], axis=0)
        curve = accuracy_curve(matrix).tolist() if matrix.shape[0] == matrix.shape[1] else matrix[-1:].mean(1).tolist()
        online = runs[0].online
        return cls(mean, std, matrix.tolist(), curve,
                   online.prequential if online else None, online.anytime if online else None,
                   online.consolidations if online else None)

    def to_dict(self) -> dict[str, Any]:
        """The summary as ``results.json`` holds it: ``acc``, ``acc_std`` and so on, flat.

        Returns:
            The scalars and their standard deviations, the matrix and curve, and the online curves when there are.
        """
        out: dict[str, Any] = {}
        for k in SCALARS:
            out[k], out[f"{k}_std"] = getattr(self.mean, k), getattr(self.std, k)
        for f in fields(Metrics):
            if f.name not in SCALARS and getattr(self.mean, f.name) is not None:
                out[f.name] = getattr(self.mean, f.name)
        out |= {"matrix": self.matrix, "curve": self.curve}
        if self.prequential_curve is not None:
            assert self.consolidations is not None  # an online run's summary has its curves and consolidations
            out |= {"prequential_curve": self.prequential_curve, "anytime_curve": self.anytime_curve,
                    "consolidations": [asdict(c) for c in self.consolidations]}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        """Read back what :meth:`to_dict` wrote.

        Args:
            d: a summary as ``results.json`` holds it (``null`` scalars read as ``nan``).

        Returns:
            The summary.
        """
        names = [f.name for f in fields(Metrics)]
        mean = _metrics({k: _number(d.get(k), k) for k in names})
        std = _metrics({k: _number(d.get(f"{k}_std"), k) for k in names})
        consolidations = d.get("consolidations")
        return cls(mean, std, d["matrix"], d["curve"], d.get("prequential_curve"), d.get("anytime_curve"),
                   [Consolidation(**c) for c in consolidations] if consolidations is not None else None)


@dataclass
class MethodResult:
    """One column of a comparison: the strategies composed, the mode, each seed's run, the summary.

    Attributes:
        compose: each strategy composed, as its config (name and settings).
        mode: ``offline``, ``online`` or ``hybrid``.
        runs: one run per seed.
        summary: the runs aggregated.
    """

    compose: list[dict[str, Any]]
    mode: str
    runs: list[SeedRun]
    summary: Summary


@dataclass
class ExperienceInfo:
    """One experience of the stream a run trained on.

    Attributes:
        id: its position in the stream.
        task: its task id.
        classes: the class ids it holds.
        n_train: training samples.
        n_test: test samples.
        new_classes: label names first seen in this batch (the user's own files).
    """

    id: int
    task: int
    classes: list[int]
    n_train: int
    n_test: int
    new_classes: list[str] = field(default_factory=list)  # label names first seen in this batch (own files)


@dataclass
class StreamInfo:
    """The stream a run trained on: its scenario, classes, input kind, backbone and experiences.

    Attributes:
        name: the stream's name.
        scenario: ``class_incremental``, ``task_incremental`` or ``domain_incremental``.
        n_classes: classes over the whole stream.
        modality: the kind of input: ``vision``, ``text``, ``audio``, ``tabular`` (or ``translation``).
        backbone: the frozen or adapted pretrained backbone; None: a model trained from scratch.
        adaptation: how that backbone was adapted (``frozen``, ``lora``, ``full``); None without one.
        experiences: each experience, in order.
        feature_seconds: frozen backbones: time to compute (or read) the features.
        cache_hits: frozen backbones: feature passes that found every row in the cache.
        cache_misses: frozen backbones: feature passes that encoded some rows.
        read_as: the user's tables: which columns were read as what.
        score: what the matrices hold, on a 0-1 scale (``accuracy``; translation: chrF++ / 100).
    """

    name: str
    scenario: str
    n_classes: int
    modality: str
    backbone: str | None
    adaptation: str | None
    experiences: list[ExperienceInfo]
    feature_seconds: float | None = None  # frozen backbones: time to compute (or read) the features
    cache_hits: int | None = None
    cache_misses: int | None = None
    read_as: str | None = None  # the user's tables: which columns were read as what
    score: str = "accuracy"  # what the matrices hold, on a 0-1 scale (translation: chrF++ / 100)


@dataclass
class ExperimentResult:
    """A whole ``retain run``: the config, versions, the stream, and every method's result.

    Attributes:
        config: the run's config, as validated.
        seeds: the seeds every method ran with.
        versions: Python's, the platform's, and those of retain and the packages behind the numbers.
        stream: the stream trained on.
        methods: each method's result, by its label.
    """

    config: dict[str, Any]
    seeds: list[int]
    versions: dict[str, str]
    stream: StreamInfo
    methods: dict[str, MethodResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``results.json`` holds (non-finite floats as None).

        Returns:
            The config, seeds, versions, stream and every method's runs and summary, as plain JSON values.
        """
        stream = {k: v for k, v in asdict(self.stream).items()
                  if v is not None or k in ("backbone", "adaptation")}
        methods = {}
        for label, m in self.methods.items():
            runs = []
            for r in m.runs:
                run = {k: v for k, v in asdict(r).items() if k != "online" and v != []}
                run["metrics"] = {k: v for k, v in run["metrics"].items() if v is not None}
                if r.online is not None:
                    run["online"] = {k: v for k, v in asdict(r.online).items() if k != "matrix"}
                runs.append(run)
            methods[label] = {"compose": m.compose, "mode": m.mode, "runs": runs, "summary": m.summary.to_dict()}
        out: dict[str, Any] = _jsonable({"config": self.config, "seeds": self.seeds, "versions": self.versions,
                                         "stream": stream, "methods": methods})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentResult:
        """Read back what :meth:`to_dict` wrote (seed runs keep their matrices and metrics).

        Args:
            d: the contents of a ``results.json``.

        Returns:
            The result (online runs' curves are in the summaries, not the seed runs).
        """
        st = dict(d["stream"])
        st["experiences"] = [ExperienceInfo(**e) for e in st["experiences"]]
        methods = {}
        for label, m in d["methods"].items():
            runs = [SeedRun(r["seed"], r["matrix"], r["untrained"], _metrics({
                f.name: _number(r["metrics"].get(f.name), f.name) for f in fields(Metrics)}), r["steps"],
                r.get("train_seconds_per_experience", []), r.get("peak_mb_per_experience", []))
                for r in m["runs"]]
            methods[label] = MethodResult(m["compose"], m["mode"], runs, Summary.from_dict(m["summary"]))
        return cls(d["config"], d["seeds"], d["versions"], StreamInfo(**st), methods)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per method (the benchmarks' shape), with the stream's backbone fields.

        Returns:
            One dict per method: scenario, strategy, mode, modality, backbone, adaptation, mean metrics and costs.
        """
        st, rows = self.stream, []
        for label, m in self.methods.items():
            mean, std = m.summary.mean, m.summary.std
            rows.append({
                "scenario": st.name, "strategy": label, "mode": m.mode, "modality": st.modality,
                "backbone": st.backbone or self.config["model"]["name"], "adaptation": st.adaptation or "full",
                "acc": mean.acc, "acc_std": std.acc, "forgetting": mean.forgetting, "bwt": mean.bwt,
                "train_seconds": mean.train_seconds, "update_seconds": mean.update_seconds,
                "feature_seconds": st.feature_seconds or 0.0, "peak_mb": mean.peak_mb,
                "trainable_parameters": mean.trainable_parameters,
                "n_train": sum(e.n_train for e in st.experiences),
            })
        return rows


def _metrics(values: dict[str, Any]) -> Metrics:
    """Metrics from its fields by name (the scalars are never None: :func:`_number` reads them as nan)."""
    return Metrics(**values)


def _number(value: Any, name: str) -> float | None:
    """A metric read back from JSON: ``null`` was a float that is not finite, or an optional metric not measured."""
    return math.nan if value is None and name in SCALARS else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
