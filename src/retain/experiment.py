"""Run a config: every method on the same stream for every seed, with metrics and costs."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retain.config import MethodConfig, RunConfig
from retain.data import OnlineStream, Stream, build_scenario, load_dataset
from retain.data.datasets import MODALITY, cache_dir, per_class
from retain.data.features import FeatureCache, LazyEncoder, encode_stream
from retain.engine import Hybrid, Learner, run_online
from retain.metrics import PeakMemory, accuracy_curve, average_accuracy, stream_accuracy, summarize
from retain.models import Classifier, LinearHead, make_model
from retain.models.pretrained import backbone_id, count_parameters, make_backbone

SCALARS = ("acc", "stream_acc", "forgetting", "bwt", "fwt", "train_seconds", "peak_mb", "gradient_steps",
           "samples_per_second")
ONLINE_SCALARS = ("prequential_acc", "update_samples_per_second", "p50_ms", "p99_ms")


def build_raw_stream(cfg: RunConfig) -> Stream:
    """The stream of raw inputs (images, token ids, waveforms) the config describes."""
    sc = cfg.scenario
    data = load_dataset(sc.dataset, sc.path, sc.test_fraction, sc.split_seed)
    if sc.max_train_per_class or sc.max_test_per_class:
        data = per_class(data, sc.max_train_per_class, sc.max_test_per_class, sc.split_seed)
    options: dict[str, Any] = {}
    if sc.kind in ("class_incremental", "task_incremental"):
        options = {"class_order": sc.class_order, "seed": sc.shuffle_seed}
    elif sc.kind == "permuted":
        options = {"seed": sc.split_seed}
    return build_scenario(sc.kind, data, sc.n_experiences, **options)


_ENCODERS: dict[tuple, torch.nn.Module] = {}


def backbone_encoder(cfg: RunConfig) -> LazyEncoder:
    """The frozen feature extractor of ``cfg.model.backbone``, built on first use, once per process."""
    m = cfg.model
    key = (m.backbone, m.image_size)

    def build() -> torch.nn.Module:
        if key not in _ENCODERS:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # random-weight backbones: their weights are part of their id
                _ENCODERS[key] = make_backbone(m.backbone, "frozen", m.image_size).eval()
        return _ENCODERS[key]

    return LazyEncoder(backbone_id(m.backbone, m.image_size), build)


def feature_cache(cfg: RunConfig) -> FeatureCache | None:
    if cfg.model.feature_cache is None:
        return None
    return FeatureCache(cache_dir() / "features" if cfg.model.feature_cache == "default" else cfg.model.feature_cache)


def build_stream(cfg: RunConfig, progress: bool = False) -> Stream:
    """The stream the learner trains on: raw inputs, or a frozen backbone's cached features.

    With a frozen backbone, ``stream.metadata`` records ``feature_seconds`` and the cache's hits and misses.
    """
    stream = build_raw_stream(cfg)
    if cfg.model.backbone is None or cfg.model.adaptation != "frozen":
        return stream
    cache = feature_cache(cfg)
    start = time.perf_counter()
    encoded = encode_stream(stream, backbone_encoder(cfg), cache, progress=progress)
    encoded.metadata |= {"feature_seconds": time.perf_counter() - start,
                         "cache_hits": cache.hits if cache else 0, "cache_misses": cache.misses if cache else 0}
    return encoded


def build_model(stream: Stream, cfg: RunConfig) -> Classifier:
    """A fresh model for ``stream`` (seed torch first): on raw inputs, on features, or around a backbone."""
    m = cfg.model
    if m.backbone is not None and m.adaptation != "frozen":
        backbone = make_backbone(m.backbone, m.adaptation, m.image_size, m.lora_rank)
        return Classifier(backbone, LinearHead(backbone.out_features, stream.n_classes))
    options = {"hidden": tuple(m.hidden)} if m.name == "mlp" else {}
    return make_model(m.name, stream.input_shape, stream.n_classes, **options)


def build_learner(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int) -> Learner:
    """The learner a config describes for one method and seed, its model initialised from ``seed``."""
    torch.manual_seed(seed)
    model = build_model(stream, cfg)
    tr = cfg.training
    return Learner(model, method.build(cfg.model.head), lr=tr.lr, momentum=tr.momentum,
                   batch_size=tr.batch_size, epochs=tr.epochs, device=tr.device, seed=seed,
                   backbone_lr=tr.backbone_lr)


def run_method_online(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int, hybrid: bool,
                      tick: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """One method, one seed, in online or hybrid mode: the stream arrives in small batches."""
    learner = build_learner(stream, cfg, method, seed)
    untrained = learner.evaluate(stream)
    oc, hc = cfg.online, cfg.hybrid
    online = OnlineStream(stream, oc.batch_size, oc.shuffle, oc.blurry, seed)
    schedule = Hybrid(**hc.model_dump()) if hybrid else None
    with PeakMemory(learner.device) as cost:
        result = run_online(learner, online, steps=oc.steps, eval_every=oc.eval_every, hybrid=schedule, tick=tick)
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
            "modality": MODALITY[cfg.scenario.dataset], "backbone": cfg.model.backbone,
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
