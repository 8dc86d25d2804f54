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
from retain.engine import distributed, run_online
from retain.engine.protocol import stream_summary, train_and_score
from retain.metrics import (
    ExperienceInfo,
    ExperimentResult,
    MethodResult,
    Metrics,
    PeakMemory,
    SeedRun,
    StreamInfo,
    Summary,
    summarize,
)
from retain.models.pretrained import count_parameters
from retain.util import auto_threads


def run_method_online(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int, hybrid: bool,
                      tick: Callable[[int], None] = lambda n: None) -> SeedRun:
    """One method, one seed, in online or hybrid mode: the stream arrives in small batches."""
    learner = build_learner(stream, cfg, method, seed)
    untrained = learner.evaluate(stream)
    oc = cfg.online
    online = OnlineStream(stream, oc.batch_size, oc.shuffle, oc.blurry, seed)
    with PeakMemory(learner.device) as cost:
        result = run_online(learner, online, steps=oc.steps, eval_every=oc.eval_every,
                            hybrid=cfg.hybrid if hybrid else None, tick=tick)
    metrics = Metrics(**summarize(result.matrix, untrained, [e.n_test for e in stream]),
                      train_seconds=result.seconds, peak_mb=cost.peak_mb, gradient_steps=result.gradient_steps,
                      samples_per_second=result.samples_per_second, prequential_acc=result.prequential_acc,
                      update_samples_per_second=result.update_samples_per_second, p50_ms=result.p50_ms,
                      p99_ms=result.p99_ms)
    return SeedRun(seed, result.matrix, untrained, metrics, learner.steps_, online=result)


def scores(learner: Any, stream: Stream) -> list[float]:
    """A row of the accuracy matrix; across ranks, rank 0 evaluates and the others record NaN."""
    return learner.evaluate(stream) if distributed.is_main() else [math.nan] * len(stream)


def run_method(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int,
               tick: Callable[[], None] = lambda: None) -> SeedRun:
    """Train one method with one seed; returns its accuracy matrix, metrics and costs."""
    learner = build_learner(stream, cfg, method, seed)
    sizes = [e.n_test for e in stream]
    untrained = scores(learner, stream)
    chunks = [stream.merged()] if method.whole_stream else list(stream)
    trained = train_and_score([learner], chunks, lambda fitted: scores(fitted, stream), lambda i, so_far: tick())
    if method.whole_stream:
        for _ in range(len(stream) - 1):
            tick()
    seconds = trained.seconds
    metrics = Metrics(**stream_summary(trained.rows, untrained, sizes, method.whole_stream),
                      train_seconds=float(sum(seconds)), peak_mb=float(max(trained.peaks)),
                      gradient_steps=learner.steps_,
                      samples_per_second=sum(len(e.y_train) for e in chunks) / max(sum(seconds), 1e-9),
                      update_seconds=float(np.mean(seconds[1:] if len(seconds) > 1 else seconds)),
                      trainable_parameters=count_parameters(learner.model)[0])
    return SeedRun(seed, trained.rows, untrained, metrics, learner.steps_, seconds, trained.peaks)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("retain", "torch", "numpy", "pydantic", "scikit-learn"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    found["torch threads"] = str(torch.get_num_threads())
    ranks = distributed.current()
    if ranks.world > 1:
        found["ranks"] = f"{ranks.world} ({distributed.backend()})"
    return found


def stream_info(stream: Stream, cfg: RunConfig) -> StreamInfo:
    """What a result records of the stream it was measured on."""
    return StreamInfo(
        name=stream.name, scenario=stream.scenario, n_classes=stream.n_classes,
        modality=stream.metadata.get("modality") or cfg.scenario.modality(), backbone=cfg.model.backbone,
        adaptation=cfg.model.adaptation if cfg.model.backbone else None,
        experiences=[ExperienceInfo(e.id, e.task, list(e.classes), e.n_train, e.n_test, new)
                     for e, new in zip(stream, stream.metadata.get("new_classes") or [[]] * len(stream), strict=True)],
        **{k: stream.metadata[k] for k in ("feature_seconds", "cache_hits", "cache_misses", "read_as")
           if stream.metadata.get(k)},
    )


def run_experiment(cfg: RunConfig, progress: bool = True, done: dict[str, MethodResult] | None = None,
                   on_method: Callable[[ExperimentResult], None] = lambda r: None) -> ExperimentResult:
    """Run every method of ``cfg`` on its stream for every seed: the config, versions, the
    stream's sizes, and per method its runs (matrix, metrics, costs per seed) and summary.

    ``done`` holds methods already measured (a resumed run): they are kept, not run again.
    ``on_method`` is called with the results so far each time a method finishes.
    """
    threads = torch.get_num_threads()
    if distributed.current().world == 1:  # across ranks, each took its share of the cores at the start
        torch.set_num_threads(auto_threads() if cfg.training.threads == "auto" else cfg.training.threads)
    try:
        return _run_experiment(cfg, progress, done or {}, on_method)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, as it was


def _run_experiment(cfg: RunConfig, progress: bool, done: dict[str, MethodResult],
                    on_method: Callable[[ExperimentResult], None]) -> ExperimentResult:
    stream = build_stream(cfg, progress=progress)
    results = ExperimentResult(cfg.model_dump(mode="json"), cfg.seeds, versions(), stream_info(stream, cfg))
    n_train = sum(e.n_train for e in stream)
    offline = "offline" in cfg.mode
    total = len(cfg.strategies) * len(cfg.seeds) * (n_train * (len(cfg.mode) - offline) + offline * len(stream))
    several = len(cfg.mode) > 1
    with tqdm(total=total, disable=not progress, unit="", desc=cfg.name) as bar:

        def tick(n: int = 1) -> None:
            bar.update(n)

        for method in cfg.strategies:
            for mode in cfg.mode:
                label = f"{method.label} [{mode}]" if several else method.label
                if label in done:
                    results.methods[label] = done[label]
                    bar.update(len(cfg.seeds) * (len(stream) if mode == "offline" else n_train))
                    continue
                runs = []
                for seed in cfg.seeds:
                    bar.set_postfix_str(f"{label} seed {seed}")
                    if mode == "offline":
                        runs.append(run_method(stream, cfg, method, seed, tick))
                    else:
                        runs.append(run_method_online(stream, cfg, method, seed, mode == "hybrid", tick))
                results.methods[label] = MethodResult(method.compose, mode, runs, Summary.of(runs))
                on_method(results)
    return results


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
        rows += run_experiment(variant, progress=progress).rows()
    return rows
