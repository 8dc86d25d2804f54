"""Run a config: every method on the same stream for every seed, with metrics and costs."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retain.config import MethodConfig, RunConfig
from retain.data import Stream, build_scenario, load_dataset
from retain.engine import Learner
from retain.metrics import PeakMemory, accuracy_curve, average_accuracy, stream_accuracy, summarize
from retain.models import make_model

SCALARS = ("acc", "stream_acc", "forgetting", "bwt", "fwt", "train_seconds", "peak_mb")


def build_stream(cfg: RunConfig) -> Stream:
    sc = cfg.scenario
    data = load_dataset(sc.dataset, sc.path, sc.test_fraction, sc.split_seed)
    options: dict[str, Any] = {}
    if sc.kind in ("class_incremental", "task_incremental"):
        options = {"class_order": sc.class_order, "seed": sc.shuffle_seed}
    elif sc.kind == "permuted":
        options = {"seed": sc.split_seed}
    return build_scenario(sc.kind, data, sc.n_experiences, **options)


def run_method(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int,
               tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Train one method with one seed; returns its accuracy matrix, metrics and costs."""
    torch.manual_seed(seed)
    model = make_model(cfg.model.name, stream.input_shape, stream.n_classes,
                       **({"hidden": tuple(cfg.model.hidden)} if cfg.model.name == "mlp" else {}))
    tr = cfg.training
    learner = Learner(model, method.build(cfg.model.head), lr=tr.lr, momentum=tr.momentum,
                      batch_size=tr.batch_size, epochs=tr.epochs, device=tr.device, seed=seed)
    sizes = [e.n_test for e in stream]
    untrained = learner.evaluate(stream)
    rows, seconds, peaks = [], [], []
    chunks = [stream.merged()] if method.whole_stream else list(stream)
    for exp in chunks:
        with PeakMemory(learner.device) as cost:
            learner.fit(exp)
        rows.append(learner.evaluate(stream))
        seconds.append(cost.seconds)
        peaks.append(cost.peak_mb)
        tick()
    if method.whole_stream:
        final = [rows[-1]] * len(stream)  # used only for the final-row metrics below
        metrics = {"acc": average_accuracy(final), "stream_acc": stream_accuracy(final, sizes),
                   "forgetting": math.nan, "bwt": math.nan, "fwt": math.nan}
        for _ in range(len(stream) - 1):
            tick()
    else:
        metrics = summarize(rows, untrained, sizes)
    return {
        "seed": seed,
        "matrix": rows,
        "untrained": untrained,
        "train_seconds_per_experience": seconds,
        "peak_mb_per_experience": peaks,
        "steps": learner.steps_,
        "metrics": metrics | {"train_seconds": float(sum(seconds)), "peak_mb": float(max(peaks))},
    }


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SCALARS:
        values = np.array([r["metrics"][key] for r in runs], dtype=float)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
    matrices = [np.asarray(r["matrix"]) for r in runs]
    mean = np.mean(matrices, axis=0)
    out["matrix"] = mean.tolist()
    out["curve"] = accuracy_curve(mean).tolist() if mean.shape[0] == mean.shape[1] else mean[-1:].mean(1).tolist()
    return out


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("retain", "torch", "numpy", "pydantic", "scikit-learn"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    return found


def run_experiment(cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Run every method of ``cfg`` on its stream for every seed.

    Returns a JSON-ready dict: the config, versions, the stream's sizes, and per method its
    runs (matrix, metrics, costs per seed) and summary (means, standard deviations, mean matrix).
    """
    if cfg.training.threads:
        torch.set_num_threads(cfg.training.threads)
    stream = build_stream(cfg)
    results: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "seeds": cfg.seeds,
        "versions": versions(),
        "stream": {
            "name": stream.name, "scenario": stream.scenario, "n_classes": stream.n_classes,
            "experiences": [{"id": e.id, "task": e.task, "classes": list(e.classes),
                             "n_train": e.n_train, "n_test": e.n_test} for e in stream],
        },
        "methods": {},
    }
    total = len(cfg.strategies) * len(cfg.seeds) * len(stream)
    with tqdm(total=total, disable=not progress, unit="exp", desc=cfg.name) as bar:
        for method in cfg.strategies:
            runs = []
            for seed in cfg.seeds:
                bar.set_postfix_str(f"{method.label} seed {seed}")
                runs.append(run_method(stream, cfg, method, seed, lambda: bar.update(1)))
            results["methods"][method.label] = {
                "compose": method.compose, "runs": runs, "summary": _aggregate(runs),
            }
    return results
