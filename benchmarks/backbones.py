"""Pretrained backbones across text, vision and audio: accuracy, cache, update vs retraining, model selection.

For each modality's stream (the example configs), this script

1. computes the frozen backbone's features twice into an empty cache (first run: every
   experience a miss; second run: every experience a hit) and times both;
2. runs the config's methods (incremental ones and Cumulative, the retrain-on-everything reference);
3. times an incremental update against retraining from scratch when the last experience arrives:
   update = features of the new experience + training the best incremental method on it;
   retrain = features of all data seen + Joint training from a fresh model on all of it
   (both with the same backbone, mode, epochs and batch size); also the head-only times;
4. model selection: text with MiniLM frozen / LoRA / full fine-tuning (and a random tiny encoder),
   vision with ImageNet EfficientNet-Lite0 frozen against random EfficientNet weights and raw pixels;
5. (run by default; ``--no-arrivals`` skips it) the update against retraining as experiences get smaller: the
   frozen text and vision streams cut into one class per experience, SLDA updating on the last class
   to arrive, retraining encoding all the data seen in one go; then batches of 1/20, 1/40 and 1/80
   of the data seen (the last class arriving in two parts).

    python benchmarks/backbones.py --out benchmarks/results/backbones.json --results benchmarks/BACKBONES.md
    python benchmarks/backbones.py --arrivals-only --merge --out ... --results ...   # step 5 alone
    python benchmarks/backbones.py --render --out ... --results ...   # the tables again from the JSON
    python benchmarks/backbones.py --smoke --out /tmp/backbones.json   # the same code, smallest (half a minute)
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retain.build import backbone_encoder, build_learner, build_raw_stream, build_stream, frozen_backbone
from retain.config import MethodConfig, RunConfig, load_config
from retain.data import Experience
from retain.data.datasets import DATASETS
from retain.data.features import FeatureCache, encode
from retain.experiment import compare_backbones, run_experiment, run_method
from retain.metrics import ExperimentResult

ROOT = Path(__file__).resolve().parent.parent
STREAMS = {
    "text_language": ROOT / "examples/text_language_minilm.yaml",
    "text_topics": ROOT / "examples/text_topics_minilm.yaml",
    "vision_fashion": ROOT / "examples/vision_fashion_efficientnet.yaml",
    "audio_keywords": ROOT / "examples/audio_keywords.yaml",
}
REFERENCE = ("cumulative", "joint")
THREADS = 2  # every timing here, the runs of run_experiment included
TEXT_CHOICES = [("minilm", "frozen"), ("minilm", "lora"), ("minilm", "full"), ("tiny_text", "frozen")]
VISION_CHOICES = [("efficientnet_lite0", "frozen"), ("efficientnet_lite0_random", "frozen"), (None, "frozen")]
# --smoke (tests/test_benchmarks.py): every step on the language stream alone (selection: MiniLM frozen, and raw
# pixels on the vision stream), each config cut to 12 training and 4 test rows a class, one seed, one epoch, the
# methods below (by example file), no feature cache, one thread (two on a core another job holds crawl).
SMOKE = {"streams": ["text_language"], "text": TEXT_CHOICES[:1], "vision": VISION_CHOICES[-1:], "threads": 1,
         "rows": {"max_train_per_class": 12, "max_test_per_class": 4},
         "methods": {"text_language_minilm": ("finetune", "slda"), "text_select": ("replay",),
                     "text_lora_experts": ("lora_experts",), "vision_fashion_efficientnet": ("replay",)}}


def _config(path: Path, smoke: bool = False) -> RunConfig:
    """An example config, run on the benchmark's threads rather than its own setting (``smoke``: cut down)."""
    cfg = load_config(path)
    cfg.training.threads = SMOKE["threads"] if smoke else THREADS
    if smoke:
        cfg.scenario = cfg.scenario.model_copy(update=SMOKE["rows"])
        cfg.model.feature_cache = None
        cfg.training.epochs, cfg.seeds = 1, [0]
        cfg.strategies = [m for m in cfg.strategies if m.label in SMOKE["methods"][path.stem]]
    return cfg



def cache_runs(cfg: RunConfig) -> dict[str, Any]:
    """Features into an empty cache, twice; then per-experience train-split times with the model loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        cold_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"feature_cache": tmp})})
        frozen_backbone.cache_clear()  # the first run pays for loading the backbone, as a new process would
        raw = build_raw_stream(cold_cfg)
        encoder, cache = backbone_encoder(cold_cfg), FeatureCache(Path(tmp))
        start = time.perf_counter()
        for e in raw:
            cache.features(encoder, e.x_train, progress=False)
            cache.features(encoder, e.x_test, progress=False)
        first = time.perf_counter() - start
        second = build_stream(cold_cfg).metadata["feature_seconds"]
    return {"first_seconds": first, "second_seconds": second, "train_feature_seconds": warm_seconds(raw, encoder),
            "n_train": [e.n_train for e in raw], "n_test": [e.n_test for e in raw]}


def warm_seconds(raw, encoder) -> list[float]:
    """Train-split encoding time of each experience, with the model already loaded (an update's real cost)."""
    module = encoder.get()
    warm = []
    for e in raw:
        t0 = time.perf_counter()
        encode(module, e.x_train, progress=False)
        warm.append(time.perf_counter() - t0)
    return warm


ARRIVALS = ("text_language", "text_topics", "vision_fashion")  # the frozen-backbone streams with SLDA


def arrivals(cfg: RunConfig) -> dict[str, Any]:
    """The same data cut into one class per experience: the last arrival is then the smallest share
    of the data seen. Update = its features + SLDA on it; retrain = all training data encoded in one
    go + Joint on it. SLDA's model does not depend on the cut (its statistics are exact)."""
    n_classes = DATASETS[cfg.scenario.dataset].n_classes
    fine = cfg.model_copy(update={"scenario": cfg.scenario.model_copy(update={"n_experiences": n_classes}),
                                  "strategies": [m for m in cfg.strategies if m.label == "slda"]})
    raw = build_raw_stream(fine)
    encoder = backbone_encoder(fine)
    feats = warm_seconds(raw, encoder)
    t0 = time.perf_counter()
    encode(encoder.get(), raw.merged().x_train, progress=False)
    all_feats = time.perf_counter() - t0
    stream = build_stream(fine)
    runs = [run_method(stream, fine, fine.strategies[0], seed) for seed in fine.seeds]
    joint = MethodConfig(label="joint", compose=[{"name": "joint"}])
    retrains = [run_method(stream, fine, joint, seed) for seed in fine.seeds]
    head_update = float(np.mean([r.train_seconds_per_experience[-1] for r in runs]))
    head_retrain = float(np.mean([r.metrics.train_seconds for r in retrains]))
    n_train = [e.n_train for e in raw]
    update, retrain = feats[-1] + head_update, all_feats + head_retrain
    sizes = batch_arrivals(fine, raw, stream, encoder, all_feats, head_retrain)
    return {"experiences": n_classes, "new_samples": n_train[-1], "seen_samples": sum(n_train), "sizes": sizes,
            "acc": float(np.mean([r.metrics.acc for r in runs])),
            "retrain_acc": float(np.mean([r.metrics.acc for r in retrains])),
            "update_feature_seconds": feats[-1], "update_head_seconds": head_update,
            "retrain_feature_seconds": all_feats, "retrain_head_seconds": head_retrain,
            "update_seconds": update, "retrain_seconds": retrain, "ratio": retrain / update}


SHARES = (20, 40, 80)  # batch arrivals: one twentieth, fortieth, eightieth of the data seen


def batch_arrivals(cfg: RunConfig, raw, stream, encoder, all_feats: float, head_retrain: float) -> list[dict[str, Any]]:
    """Update against retraining when a batch smaller than a class arrives: the last class's
    training samples come in a first part and then a batch of ``seen / share`` samples. Update =
    the batch's features (best of 3) + SLDA on it, with the learner trained on everything before;
    retrain = all the training data encoded in one go + Joint on it (measured on the whole set,
    which the batch completes)."""
    module, last, raw_last = encoder.get(), stream[len(stream) - 1], raw[len(raw) - 1]
    seen = sum(e.n_train for e in raw)
    before = []  # per seed, the learner that has learned every class but the last
    for seed in cfg.seeds:
        learner = build_learner(stream, cfg, cfg.strategies[0], seed)
        for e in list(stream)[:-1]:
            learner.fit(e)
        before.append(learner)
    rows = []
    for share in SHARES:
        k = seen // share
        if k >= last.n_train:
            continue
        feats = []
        for _ in range(3):
            t0 = time.perf_counter()
            encode(module, raw_last.x_train[last.n_train - k:], progress=False)
            feats.append(time.perf_counter() - t0)
        first = Experience(last.x_train[:-k], last.y_train[:-k], last.x_test, last.y_test, id=last.id)
        batch = Experience(last.x_train[-k:], last.y_train[-k:], last.x_test, last.y_test, id=last.id + 1)
        heads = []
        for learner in map(copy.deepcopy, before):
            learner.fit(first)
            t0 = time.perf_counter()
            learner.fit(batch)
            heads.append(time.perf_counter() - t0)
        update = min(feats) + float(np.mean(heads))
        rows.append({"new_samples": k, "seen_samples": seen, "update_feature_seconds": min(feats),
                     "update_head_seconds": float(np.mean(heads)), "update_seconds": update,
                     "retrain_seconds": all_feats + head_retrain, "ratio": (all_feats + head_retrain) / update})
    return rows


def update_vs_retrain(cfg: RunConfig, results: ExperimentResult, cache: dict[str, Any]) -> dict[str, Any]:
    methods = {k: v for k, v in results.methods.items() if k not in REFERENCE}
    best = max(methods, key=lambda k: methods[k].summary.mean.acc)
    head_update = float(np.mean([r.train_seconds_per_experience[-1] for r in methods[best].runs]))
    stream = build_stream(cfg)
    joint = MethodConfig(label="joint", compose=[{"name": "joint"}])
    runs = [run_method(stream, cfg, joint, seed) for seed in cfg.seeds]
    head_retrain = float(np.mean([r.metrics.train_seconds for r in runs]))
    feats = cache["train_feature_seconds"]
    update, retrain = feats[-1] + head_update, sum(feats) + head_retrain
    return {
        "best_method": best, "best_acc": methods[best].summary.mean.acc,
        "retrain_acc": float(np.mean([r.metrics.acc for r in runs])),
        "cumulative_acc": results.methods["cumulative"].summary.mean.acc if "cumulative" in results.methods else None,
        "update_seconds": update, "retrain_seconds": retrain, "ratio": retrain / update,
        "head_update_seconds": head_update, "head_retrain_seconds": head_retrain,
        "head_ratio": head_retrain / head_update,
    }


def run(names: list[str], select: bool, partial: Path | None = None, streams: bool = True,
        cut: bool = True, smoke: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": [], "streams": {}, "selection": [], "adapters": [], "arrivals": {}}
    for name in (n for n in names if cut and n in ARRIVALS):
        print(f"== {name}, one class per experience", flush=True)
        out["arrivals"][name] = arrivals(_config(STREAMS[name], smoke))
        print(json.dumps(out["arrivals"][name]), flush=True)
        if partial:
            partial.write_text(json.dumps(out))
    for name in names if streams else []:
        cfg = _config(STREAMS[name], smoke)
        print(f"== {name}", flush=True)
        cache = cache_runs(cfg)
        results = run_experiment(cfg, progress=False)
        cost = update_vs_retrain(cfg, results, cache)
        rows = results.rows()
        for r in rows:
            r |= {"stream": name, "retrain_seconds": cost["retrain_seconds"],
                  "feature_seconds": cache["first_seconds"]}
        out["rows"] += rows
        out["streams"][name] = {"cache": cache, "cost": cost, "seeds": cfg.seeds,
                                "modality": results.stream.modality, "backbone": cfg.model.backbone,
                                "classes": results.stream.n_classes,
                                "experiences": len(results.stream.experiences)}
        print(json.dumps({"cache": {k: cache[k] for k in ("first_seconds", "second_seconds")}, "cost": cost}),
              flush=True)
        if partial:
            partial.write_text(json.dumps(out))
    if select and streams:
        experts = run_experiment(_config(ROOT / "examples/text_lora_experts.yaml", smoke), progress=False)
        out["adapters"] = experts.rows()
        if partial:
            partial.write_text(json.dumps(out))
        text = _config(ROOT / "examples/text_select.yaml", smoke)
        out["selection"] += compare_backbones(text, SMOKE["text"] if smoke else TEXT_CHOICES, progress=False)
        if partial:
            partial.write_text(json.dumps(out))
        vision = _config(STREAMS["vision_fashion"], smoke)
        vision.strategies = [m for m in vision.strategies if m.label in ("replay", "cumulative")]
        out["selection"] += compare_backbones(vision, SMOKE["vision"] if smoke else VISION_CHOICES, progress=False)
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}"


def write_results(out: dict[str, Any], path: Path) -> None:
    lines = ["# Pretrained backbones: text, vision, audio", "",
             "Generated by `python benchmarks/backbones.py --out benchmarks/results/backbones.json "
             "--results benchmarks/BACKBONES.md` on 2 CPU cores (no GPU). Configs: `examples/*.yaml`.", "",
             "## Streams and accuracy (final ACC %, mean ± std over seeds)", "",
             "| stream | modality | backbone | classes / experiences | train / test samples | method | ACC % | "
             "forgetting % | update s (head) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, st in out["streams"].items():
        for r in (r for r in out["rows"] if r["stream"] == name):
            lines.append(f"| {name} | {st['modality']} | {st['backbone']} | {st['classes']} / {st['experiences']} | "
                         f"{sum(st['cache']['n_train'])} / {sum(st['cache']['n_test'])} | {r['strategy']} | "
                         f"{_pct(r['acc'])} ± {_pct(r['acc_std'])} | {_pct(r['forgetting'])} | "
                         f"{r['update_seconds']:.2f} |")
    lines += ["", "## Incremental update vs retraining from scratch (last experience arrives)", "",
              "Update = features of the new experience + training the best incremental method on it. Retrain = "
              "features of all data seen + Joint training of a fresh model on it. Head-only columns leave the "
              "features out (as if every feature were already cached). With a frozen backbone the update "
              "encodes its new samples with the encoder that the retrain runs over every sample seen, and "
              "encoding takes most of both, so retrain / update stays near seen / new samples (4-5 for these "
              "streams' last experience; text also varies with the length of the quotes encoded). The next "
              "sections shrink the arrival.", "",
              "| stream | best incremental | its ACC % | retrain ACC % | gap (points) | seen / new samples | "
              "update s | retrain s | retrain / update | head update s | head retrain s | head ratio |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, st in out["streams"].items():
        c, n_train = st["cost"], st["cache"]["n_train"]
        lines.append(f"| {name} | {c['best_method']} | {_pct(c['best_acc'])} | {_pct(c['retrain_acc'])} | "
                     f"{100 * (c['retrain_acc'] - c['best_acc']):+.1f} | {sum(n_train)} / {n_train[-1]} | "
                     f"{c['update_seconds']:.2f} | {c['retrain_seconds']:.2f} | {c['ratio']:.1f}× | "
                     f"{c['head_update_seconds']:.2f} | {c['head_retrain_seconds']:.2f} | {c['head_ratio']:.1f}× |")
    if out.get("arrivals"):
        lines += ["", "## Smaller arrivals: one class per experience", "",
                  "The same frozen-feature data cut into one class per experience. Update = features of the last "
                  "class to arrive + SLDA on it (SLDA's model is the same whatever the cut). Retrain = the "
                  "features of all the training data, encoded in one go, + Joint training a fresh head on them.", "",
                  "| stream | experiences | new / seen samples | SLDA ACC % | retrain ACC % | "
                  "update s (features + head) | retrain s (features + head) | retrain / update |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, a in out["arrivals"].items():
            lines.append(f"| {name} | {a['experiences']} | {a['new_samples']} / {a['seen_samples']} | "
                         f"{_pct(a['acc'])} | {_pct(a['retrain_acc'])} | {a['update_seconds']:.2f} "
                         f"({a['update_feature_seconds']:.2f} + {a['update_head_seconds']:.2f}) | "
                         f"{a['retrain_seconds']:.2f} ({a['retrain_feature_seconds']:.2f} + "
                         f"{a['retrain_head_seconds']:.2f}) | {a['ratio']:.1f}× |")
        if any(a.get("sizes") for a in out["arrivals"].values()):
            lines += ["", "### Batches smaller than a class", "",
                      "The last class arrives in two parts; the second, a batch of 1/20, 1/40 or 1/80 of the training "
                      "data, is the update timed here (SLDA on it, the learner having learned everything before; "
                      "its features, best of 3). Retrain = as above, the whole training set, which the batch "
                      "completes.", "",
                      "| stream | new / seen samples | update s (features + head) | retrain s | retrain / update |",
                      "| --- | --- | --- | --- | --- |"]
            for name, a in out["arrivals"].items():
                for r in a.get("sizes", []):
                    lines.append(f"| {name} | {r['new_samples']} / {r['seen_samples']} | {r['update_seconds']:.2f} "
                                 f"({r['update_feature_seconds']:.2f} + {r['update_head_seconds']:.2f}) | "
                                 f"{r['retrain_seconds']:.2f} | {r['ratio']:.1f}× |")
    lines += ["", "## Feature cache: the same stream twice into an empty cache", "",
              "| stream | first run: features s | second run: features s | second / first |",
              "| --- | --- | --- | --- |"]
    for name, st in out["streams"].items():
        c = st["cache"]
        lines.append(f"| {name} | {c['first_seconds']:.2f} | {c['second_seconds']:.3f} | "
                     f"{100 * c['second_seconds'] / c['first_seconds']:.2f}% |")
    if out["selection"]:
        lines += ["", "## Model selection (`retain select`)", "",
                  "| stream | backbone | adaptation | method | ACC % | forgetting % | update s | features s | "
                  "trainable params | peak MB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in out["selection"]:
            lines.append(f"| {r['scenario']} | {r['backbone']} | {r['adaptation']} | {r['strategy']} | "
                         f"{_pct(r['acc'])} | {_pct(r['forgetting'])} | {r['update_seconds']:.2f} | "
                         f"{r['feature_seconds']:.1f} | {r['trainable_parameters']:,.0f} | {r['peak_mb']:.0f} |")
    if out["adapters"]:
        lines += ["", "## Per-experience LoRA adapters against one shared adapter (`examples/text_lora_experts.yaml`)",
                  "", "No task ids at test time: `lora_experts` picks the adapter by the nearest class prototype.", "",
                  "| method | ACC % | forgetting % | update s | trainable params (end) | peak MB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in out["adapters"]:
            lines.append(f"| {r['strategy']} | {_pct(r['acc'])} | {_pct(r['forgetting'])} | "
                         f"{r['update_seconds']:.2f} | {r['trainable_parameters']:,.0f} | {r['peak_mb']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--no-select", action="store_true", help="skip the model-selection runs")
    parser.add_argument("--out", type=Path, help="write the JSON rows here")
    parser.add_argument("--results", type=Path, help="write the Markdown tables here")
    parser.add_argument("--merge", action="store_true",
                        help="keep what --out already holds for the streams (and selection) not run now")
    parser.add_argument("--no-arrivals", action="store_true", help="skip the one-class-per-experience cuts")
    parser.add_argument("--arrivals-only", action="store_true", help="run only the one-class-per-experience cuts")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write --results from the JSON that --out already holds")
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code: the language "
                        "stream alone, 12 training rows a class, one seed, one epoch, a few methods and backbones")
    args = parser.parse_args()
    if args.smoke:
        args.streams = SMOKE["streams"]
    if args.render:
        if not (args.out and args.out.is_file() and args.results):
            parser.error("--render needs --out naming an existing JSON file and --results")
        write_results(json.loads(args.out.read_text()), args.results)
        return
    torch.set_num_threads(SMOKE["threads"] if args.smoke else THREADS)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".partial.json") if args.out else None
    out = run(args.streams, not args.no_select, partial, streams=not args.arrivals_only, cut=not args.no_arrivals,
              smoke=args.smoke)
    if args.merge and args.out and args.out.is_file():
        old = json.loads(args.out.read_text())
        ran = set() if args.arrivals_only else set(args.streams)
        out["rows"] = [r for r in old["rows"] if r.get("stream") not in ran] + out["rows"]
        out["streams"] = {k: v for k, v in old["streams"].items() if k not in ran} | out["streams"]
        out["streams"] = {k: out["streams"][k] for k in STREAMS if k in out["streams"]}
        for key in ("selection", "adapters"):
            out[key] = out[key] or old.get(key, [])
        out["arrivals"] = old.get("arrivals", {}) | out["arrivals"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    if args.results:
        write_results(out, args.results)
        print(args.results.read_text())


if __name__ == "__main__":
    main()
