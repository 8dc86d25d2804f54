"""Build what a run config describes: its stream (raw or a frozen backbone's cached features), model and learner.

Whatever builds a learner from a config (the comparison runner, the benchmarks) does it here; this
module needs none of the runner.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retain.config import MethodConfig, RunConfig
from retain.data import Stream, build_scenario, load_dataset
from retain.data.datasets import cache_dir, per_class
from retain.data.features import FeatureCache, LazyEncoder, encode, encode_stream
from retain.data.files import load_stream
from retain.engine import Learner, distributed
from retain.engine.learner import KNOBS
from retain.models import make_model
from retain.models.pretrained import backbone_id, make_backbone


def build_raw_stream(cfg: RunConfig) -> Stream:
    """The stream of raw inputs (images, token ids, waveforms) the config describes."""
    sc = cfg.scenario
    if sc.dataset == "files":
        if sc.path is None:  # left out only by the loop's configs, whose batches come one by one
            raise ValueError("scenario.path: dataset files needs the folder of batch folders")
        return load_stream(sc.path, **sc.files.options())
    data = load_dataset(sc.dataset, sc.path, sc.test_fraction, sc.split_seed)
    if sc.max_train_per_class or sc.max_test_per_class:
        data = per_class(data, sc.max_train_per_class, sc.max_test_per_class, sc.split_seed)
    options: dict[str, Any] = {}
    if sc.kind in ("class_incremental", "task_incremental"):
        options = {"class_order": sc.class_order, "seed": sc.shuffle_seed}
    elif sc.kind == "permuted":
        options = {"seed": sc.split_seed}
    return build_scenario(sc.kind, data, sc.n_experiences, **options)


@functools.cache
def frozen_backbone(name: str, image_size: int) -> torch.nn.Module:
    """A frozen backbone, built once per process (loading a pretrained one takes seconds)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random-weight backbones: their weights are part of their id
        return make_backbone(name, "frozen", image_size).eval()


def backbone_encoder(cfg: RunConfig) -> LazyEncoder:
    """The frozen feature extractor of ``cfg.model.backbone``, built on first use."""
    m, backbone = cfg.model, cfg.model.backbone
    assert backbone is not None  # asked for only of a config with a frozen backbone
    return LazyEncoder(backbone_id(backbone, m.image_size), lambda: frozen_backbone(backbone, m.image_size))


def feature_cache(cfg: RunConfig) -> FeatureCache | None:
    folder = cfg.model.feature_cache
    if folder is None:
        return None
    return FeatureCache(cache_dir() / "features" if folder == "default" else Path(folder), writes=distributed.is_main())


def sharded_encode(encoder: torch.nn.Module, x: Tensor, batch_size: int, desc: str, progress: bool) -> Tensor:
    """Features of ``x`` computed across ranks: each encodes its share of the rows, then every
    rank gathers the whole (one process: :func:`encode`)."""
    ranks = distributed.current()
    if ranks.world == 1:
        return encode(encoder, x, batch_size, desc, progress)
    part = encode(encoder, ranks.take(x), batch_size, desc, progress and ranks.rank == 0)
    return distributed.all_gather_rows(ranks, part, len(x))


def model_inputs(cfg: RunConfig, x: Tensor, progress: bool = False) -> Tensor:
    """What the model reads of raw inputs ``x``: themselves, or a frozen backbone's (cached) features."""
    if cfg.model.backbone is None or cfg.model.adaptation != "frozen":
        return x
    cache, encoder = feature_cache(cfg), backbone_encoder(cfg)
    if cache is None:
        return encode(encoder.get(), x, progress=progress)
    return cache.features(encoder, x, progress=progress)


def build_stream(cfg: RunConfig, progress: bool = False) -> Stream:
    """The stream the learner trains on: raw inputs, or a frozen backbone's cached features.

    With a frozen backbone, ``stream.metadata`` records ``feature_seconds`` and the cache's hits and misses.
    """
    stream = build_raw_stream(cfg)
    if cfg.model.backbone is None or cfg.model.adaptation != "frozen":
        return stream
    cache = feature_cache(cfg)
    start = time.perf_counter()
    encoded = encode_stream(stream, backbone_encoder(cfg), cache, progress=progress, compute=sharded_encode,
                            agree=distributed.everyone)
    encoded.metadata |= {"feature_seconds": time.perf_counter() - start,
                         "cache_hits": cache.hits if cache else 0, "cache_misses": cache.misses if cache else 0}
    return encoded


def build_learner(stream: Stream, cfg: RunConfig, method: MethodConfig, seed: int) -> Learner:
    """The learner a config describes for one method and seed, its model (``make_model``: on raw
    inputs, on a frozen backbone's features, or around a backbone that trains) initialised from ``seed``."""
    torch.manual_seed(seed)
    m, tr = cfg.model, cfg.training
    options: dict[str, Any] = {"hidden": tuple(m.hidden)} if m.name == "mlp" else {}
    model = make_model(m.name, stream.input_shape, stream.n_classes, backbone=m.backbone, adaptation=m.adaptation,
                       image_size=m.image_size, lora_rank=m.lora_rank, **options)
    learner = Learner(model, method.build(cfg.model.head), device=tr.device, seed=seed,
                      **{k: getattr(tr, k) for k in KNOBS})
    learner.class_names_ = list(stream.class_names)  # saved with the model: ids keep their names
    return learner
