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

from retain.build import build_learner, build_stream
from retain.config import MethodConfig, RunConfig
from retain.data import OnlineStream, Stream
from retain.data.datasets import DATASETS
from retain.engine import run_online
from retain.metrics import PeakMemory, accuracy_curve, average_accuracy, stream_accuracy, summarize
from retain.models.pretrained import count_parameters

SCALARS = ("acc", "stream_acc", "forgetting", "bwt", "fwt", "train_seconds", "peak_mb", "gradient_steps",
           "samples_per_second")
ONLINE_SCALARS = ("prequential_acc", "update_samples_per_second", "p50_ms", "p99_ms")


def run_method_online(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int, hybrid: bool,
                      tick: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """One method, one seed, in online or hybrid mode: the stream arrives in small batches."""
    learner = build_learner(stream, cfg, method, seed)
    untrained = learner.evaluate(stream)
    oc, hc = cfg.online, cfg.hybrid
    online = OnlineStream(stream, oc.batch_size, oc.shuffle, oc.blurry, seed)
    with PeakMemory(learner.device) as cost:
        run = run_online(learner, online, steps=oc.steps, eval_every=oc.eval_every, hybrid=hc if hybrid else None,
                         tick=tick)
    result = run.to_dict()
    rows = result.pop("matrix")
    metrics = summarize(rows, untrained, [e.n_test for e in stream])
    metrics |= {k: result[k] for k in ("prequential_acc", "gradient_steps", "samples_per_second",
                                         "update_samples_per_second", "p50_ms", "p99_ms")}
    metrics |= {"train_seconds": result["seconds"], "peak_mb": cost.peak_mb}
    return {"seed": seed, "matrix": rows, "untrained": untrained, "online": result, "steps": learner.steps_,
            "metrics": metrics}


def run_method(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int,
               tick: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Train one method with one seed; returns its accuracy matrix, metrics and costs."""
    learner = build_learner(stream, cfg, method, seed)
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
        "metrics": metrics | {"train_seconds": float(sum(seconds)), "peak_mb": float(max(peaks)),
                              "update_seconds": float(np.mean(seconds[1:] if len(seconds) > 1 else seconds)),
                              "trainable_parameters": count_parameters(learner.model)[0],
                              "gradient_steps": learner.steps_,
                              "samples_per_second": sum(len(e.y_train) for e in chunks) / max(sum(seconds), 1e-9)},
    }


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SCALARS:
        values = np.array([r["metrics"][key] for r in runs], dtype=float)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
    for key in ("update_seconds", "trainable_parameters", *ONLINE_SCALARS):
        if key in runs[0]["metrics"]:
            out[key] = float(np.mean([r["metrics"][key] for r in runs]))
    if "online" in runs[0]:
        out["prequential_curve"] = runs[0]["online"]["prequential"]
        out["anytime_curve"] = runs[0]["online"]["anytime"]
        out["consolidations"] = runs[0]["online"]["consolidations"]
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
    stream = build_stream(cfg, progress=progress)
    results: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "seeds": cfg.seeds,
        "versions": versions(),
        "stream": {
            "name": stream.name, "scenario": stream.scenario, "n_classes": stream.n_classes,
            "modality": DATASETS[cfg.scenario.dataset].modality, "backbone": cfg.model.backbone,
            "adaptation": cfg.model.adaptation if cfg.model.backbone else None,
            **{k: stream.metadata[k] for k in ("feature_seconds", "cache_hits", "cache_misses")
               if k in stream.metadata},
            "experiences": [{"id": e.id, "task": e.task, "classes": list(e.classes),
                             "n_train": e.n_train, "n_test": e.n_test} for e in stream],
        },
        "methods": {},
    }
    n_train = sum(e.n_train for e in stream)
    offline = "offline" in cfg.mode
    total = len(cfg.strategies) * len(cfg.seeds) * (n_train * (len(cfg.mode) - offline) + offline * len(stream))
    several = len(cfg.mode) > 1
    with tqdm(total=total, disable=not progress, unit="", desc=cfg.name) as bar:
        for method in cfg.strategies:
            for mode in cfg.mode:
                label = f"{method.label} [{mode}]" if several else method.label
                runs = []
                for seed in cfg.seeds:
                    bar.set_postfix_str(f"{label} seed {seed}")
                    if mode == "offline":
                        runs.append(run_method(stream, cfg, method, seed, lambda: bar.update(1)))
                    else:
                        runs.append(run_method_online(stream, cfg, method, seed, mode == "hybrid", bar.update))
                results["methods"][label] = {
                    "compose": method.compose, "mode": mode, "runs": runs, "summary": _aggregate(runs),
                }
    return results


def result_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON row per method in the benchmarks' shape, with the backbone's fields added."""
    st = results["stream"]
    rows = []
    for label, entry in results["methods"].items():
        sm = entry["summary"]
        rows.append({
            "scenario": st["name"], "strategy": label, "mode": entry["mode"], "modality": st["modality"],
            "backbone": st["backbone"] or results["config"]["model"]["name"], "adaptation": st["adaptation"] or "full",
            "acc": sm["acc"], "acc_std": sm["acc_std"], "forgetting": sm["forgetting"], "bwt": sm["bwt"],
            "train_seconds": sm["train_seconds"], "update_seconds": sm.get("update_seconds"),
            "feature_seconds": st.get("feature_seconds", 0.0), "peak_mb": sm["peak_mb"],
            "trainable_parameters": sm.get("trainable_parameters"),
            "n_train": sum(e["n_train"] for e in st["experiences"]),
        })
    return rows


def compare_backbones(cfg: RunConfig, choices: list[tuple[str | None, str]], progress: bool = True,
                      ) -> list[dict[str, Any]]:
    """Model selection: run ``cfg`` once per (backbone, adaptation) and return all rows side by side.

    Backbone ``None`` means raw inputs; a config whose head is a linear probe (``hidden: []``)
    then gets the foundation's MLP (256, 256)."""
    rows = []
    for backbone, adaptation in choices:
        update: dict[str, Any] = {"backbone": backbone, "adaptation": adaptation}
        if backbone is None and not cfg.model.hidden:
            update["hidden"] = [256, 256]  # raw inputs need hidden layers: the foundation's MLP
        model = cfg.model.model_copy(update=update)
        variant = RunConfig.model_validate(cfg.model_dump() | {"model": model.model_dump(),
                                                              "name": f"{cfg.name}-{backbone}-{adaptation}"})
        rows += result_rows(run_experiment(variant, progress=progress))
    return rows
