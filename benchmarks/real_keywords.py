"""Real-speech keyword streams (KTuberling's recordings) beside the synthesised one: replay against retraining.

Three streams, one protocol (``examples/audio_keywords.yaml``'s: cached log-mel features, ``audio_cnn``,
SGD lr 0.05 momentum 0.9, batch 32, one torch thread), the same epochs per experience for every
method of a stream (joint trains that many epochs on the whole stream):

- ``keywords``: the 20 synthesised command words, class-incremental in 5 experiences, test voices
  held out; 8 epochs;
- ``spoken_words``: KTuberling's 71 English words, class-incremental in 5 experiences; one recording
  per word, so test clips are held-out perturbed copies of the training speaker's word; 8 epochs;
- ``spoken_languages``: 69 concepts, domain-incremental: 4 languages, one an experience (other
  speakers, other words, same labels), each tested on its own held-out copies; a 5th language is
  never trained on (``held_out_acc``); 16 epochs (see ``LANGUAGE_SET`` for why 5 languages, not 13).

Rows: the majority-class baseline, retraining on all data (``joint``), sequential fine-tuning and
the replay-style methods (a 200-clip memory; DER++ also with 500 on the English words);
final accuracy, forgetting and the gap to joint.

    python benchmarks/real_keywords.py --out benchmarks/results/real_keywords.json   # 17 min, 2 seeds, 1 thread
    python benchmarks/real_keywords.py --smoke --out /tmp/real_keywords.json          # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from retain.build import backbone_encoder, build_learner, feature_cache
from retain.config import RunConfig
from retain.data import Stream, class_incremental
from retain.data.audio import keywords, voices
from retain.data.datasets import load_dataset
from retain.data.features import encode_stream
from retain.data.spoken_words import LANGUAGES, by_language, language_groups, shared_concepts, spoken_words
from retain.engine.protocol import stream_summary, train_and_score

REPLAY = [{"name": "replay", "memory_size": 200}, {"name": "derpp", "memory_size": 200},
          {"compose": [{"name": "derpp", "memory_size": 500}], "label": "derpp_500"}]
METHODS = ["finetune", *REPLAY, "joint"]
# stream -> (data set, experiences, epochs, methods). ER-ACE is left out: on the first full run (seed 0,
# 8 epochs) it trailed DER++ by 13 and 8 points on the two class-incremental streams, at a DER++ run's cost.
STREAMS = {"keywords": ("keywords", 5, 8, ["finetune", *REPLAY[:2], "joint"]),
           "spoken_words": ("spoken_words", 5, 8, METHODS),
           "spoken_languages": ("spoken_languages", 4, 16, ["finetune", REPLAY[1], "joint"])}
# The language stream: 5 languages (4 trained, one per experience; language_groups' seed 0 keeps "fr" out),
# 16 copies per recording. With all 12 (3 a group, 8 copies) retraining reached 13% on a validation
# slice of the training copies after 8 epochs and 35% after 24: each concept is several different
# words, and the CNN trained from scratch needs far more steps than the 20-minute budget holds.
# Here it reached 50% (train 60%) after 16 epochs on the same kind of slice.
LANGUAGE_SET, LANGUAGE_COPIES = ("de", "el", "en", "fr", "ru"), 16
# --smoke (tests/test_benchmarks.py): every stream on a sliver of its data, one epoch, one seed.
SMOKE = {"words": 4, "copies": 4, "languages": LANGUAGES[:3], "epochs": 1, "seeds": [0]}


def config(dataset: str, n_experiences: int, epochs: int, seeds: list[int], methods: list) -> RunConfig:
    return RunConfig.model_validate({
        "name": f"real_keywords-{dataset}",
        "scenario": {"dataset": dataset, "n_experiences": n_experiences, "test_fraction": 0.25},
        "model": {"backbone": "logmel", "name": "audio_cnn"},
        "training": {"epochs": epochs, "lr": 0.05, "batch_size": 32, "momentum": 0.9, "device": "cpu", "threads": 1},
        "strategies": methods, "seeds": seeds,
    })


def streams(smoke: bool) -> dict[str, tuple[Stream, Stream | None]]:
    """Each stream of raw waveforms, and for ``spoken_languages`` the never-trained language as a one-experience
    stream; with ``smoke``, a few words, copies and languages of each."""
    out: dict[str, tuple[Stream, Stream | None]] = {}
    n_words, copies = SMOKE["words"], SMOKE["copies"]
    for name, (dataset, n, _, _) in STREAMS.items():
        if name == "spoken_languages":
            languages = SMOKE["languages"] if smoke else LANGUAGE_SET
            concepts = shared_concepts(LANGUAGES)[:n_words] if smoke else None
            data = spoken_words(languages, concepts, copies=copies if smoke else LANGUAGE_COPIES, progress=False)
            data.name = "spoken_languages"
            groups, held_out = language_groups(languages, len(languages) - 1 if smoke else n)
            out[name] = (by_language(data, groups), by_language(data, [held_out]))
            continue
        if not smoke:
            data = load_dataset(dataset, test_fraction=0.25)
        elif name == "keywords":
            data = keywords(words=("yes", "no", "up", "down"), copies=2, speakers=voices()[::8], progress=False)
        else:
            data = spoken_words(concepts=shared_concepts(["en"])[:n_words], copies=copies, progress=False)
        out[name] = (class_incremental(data, 2 if smoke else n), None)
    return out


def features(cfg: RunConfig, stream: Stream) -> Stream:
    """The stream as cached log-mel spectrograms (what the CNN and the replay memory hold)."""
    return encode_stream(stream, backbone_encoder(cfg), feature_cache(cfg), progress=False)


def majority(train: Stream, test: Stream) -> float:
    """Average accuracy on ``test``'s experiences of always answering ``train``'s most frequent class."""
    top = int(torch.cat([e.y_train for e in train]).bincount().argmax())
    return float(np.mean([float((e.y_test == top).float().mean()) for e in test]))


def run_one(stream: Stream, cfg: RunConfig, method, seed: int, held_out: Stream | None) -> dict:
    """One method, one seed: the learner's metrics, and its accuracy on the never-trained language."""
    learner = build_learner(stream, cfg, method, seed)
    untrained = learner.evaluate(stream)
    chunks = [stream.merged()] if method.whole_stream else list(stream)
    trained = train_and_score([learner], chunks, lambda fitted: fitted.evaluate(stream))
    metrics = stream_summary(trained.rows, untrained, [e.n_test for e in stream], method.whole_stream)
    metrics["train_seconds"] = float(sum(trained.seconds))
    if held_out is not None:
        metrics["held_out_acc"] = learner.evaluate(held_out)[0]
    return metrics


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def run(smoke: bool, seeds: list[int], epochs: int | None) -> dict:
    """Every stream's rows; ``epochs`` (when given) replaces each stream's own number of epochs."""
    start = time.perf_counter()
    built, rows = streams(smoke), []
    data_seconds = time.perf_counter() - start
    for name, (raw, held_raw) in built.items():
        dataset, _, stream_epochs, methods = STREAMS[name]
        cfg = config(dataset, len(raw), epochs or stream_epochs, seeds, methods)
        stream = features(cfg, raw)
        held_out = features(cfg, held_raw) if held_raw is not None else None
        base = {"stream": name, "scenario": raw.scenario, "n_classes": raw.n_classes, "experiences": len(raw),
                "n_train": sum(e.n_train for e in raw), "n_test": sum(e.n_test for e in raw), "seeds": seeds,
                "epochs": cfg.training.epochs}
        if held_out is not None:
            base["held_out_languages"] = held_raw[0].metadata["languages"]
        found = {"majority": {"acc": majority(stream, stream), "acc_std": 0.0, "forgetting": None, "bwt": None,
                              "train_seconds": 0.0}}
        if held_out is not None:
            found["majority"]["held_out_acc"] = majority(stream, held_out)
        for method in cfg.strategies:
            runs = [run_one(stream, cfg, method, seed, held_out) for seed in seeds]
            acc = [r["acc"] for r in runs]
            found[method.label] = {"acc": float(np.mean(acc)), "acc_std": float(np.std(acc)),
                                   "forgetting": _mean([r["forgetting"] for r in runs]),
                                   "bwt": _mean([r["bwt"] for r in runs]),
                                   "train_seconds": float(np.mean([r["train_seconds"] for r in runs]))}
            if held_out is not None:
                found[method.label]["held_out_acc"] = float(np.mean([r["held_out_acc"] for r in runs]))
            print(name, method.label, {k: round(v, 4) if isinstance(v, float) else v
                                       for k, v in found[method.label].items()}, flush=True)
        joint = found["joint"]["acc"]
        for label, metrics in found.items():
            rows.append(base | {"strategy": label} | metrics | {"gap_to_joint": metrics["acc"] - joint})
    return {"protocol": {"backbone": "logmel", "model": "audio_cnn", "lr": 0.05, "batch_size": 32,
                         "epochs": {k: epochs or v[2] for k, v in STREAMS.items()},
                         "memory_size": {"derpp_500": 500, "others": 200}, "torch_threads": torch.get_num_threads(),
                         "smoke": smoke,
                         "date": time.strftime("%Y-%m-%d")},
            "data_seconds": data_seconds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="write the results as JSON")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per experience on every stream "
                        f"(default: each stream's own, {({k: v[2] for k, v in STREAMS.items()})})")
    parser.add_argument("--smoke", action="store_true", help=f"the smallest run of the same code: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        args.seeds, args.epochs = SMOKE["seeds"], SMOKE["epochs"]
    torch.set_num_threads(1)
    result = run(args.smoke, args.seeds, args.epochs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
