"""Object detection that learns new classes: every method on the class-incremental scene stream, mAP.

Protocol: ``retain.data.scenes.detection_stream`` (Fashion-MNIST garments on textured 128-pixel scenes,
2-4 objects a scene; experience 1 labels classes 0-4, experience 2 labels 5-9 while classes 0-4 still
appear in its scenes, unlabelled; 300 test scenes of held-out items with every object labelled), the
CenterNet-style detector of ``retain.models.detector`` on EfficientNet-Lite0's frozen ImageNet features
(the neck and heads train), AdamW at ``LR``, batch 16, ``EPOCHS`` epochs an experience. After each
experience: mAP@0.5 and mAP@[.5:.95] on the old classes, the new ones and all of them (COCO's
definition, ``retain.metrics.detection``); the matrix ``R[i, j]`` is mAP@0.5 over experience ``j``'s
classes after experience ``i``.

Methods: sequential fine-tuning (the background shift unopposed), distillation of the old detector's
outputs (``detection_distill``, ILOD), pseudo-labels of old objects from the old detector
(``pseudo_labels``), box replay pasting stored old boxes into new scenes (``box_replay``, ABR), their
compositions, image replay (``replay``, a reservoir of 100 scenes), and joint training on every
experience with every object labelled (the ceiling). Speed: ``DetectionLearner.train_step`` against a
hand-written loop over the same detector, targets, loss and batches (AdamW, the same clip), alternating
rounds; the best round of each.

    python benchmarks/detection.py --out benchmarks/results/detection.json --results benchmarks/DETECTION.md
    python benchmarks/detection.py --smoke --out /tmp/detection.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from retain.data import Experience
from retain.data.scenes import DetectionStream, detection_stream, pack, unpack
from retain.engine.detection import DetectionLearner
from retain.metrics import forgetting
from retain.metrics.detection import Boxes, mean_average_precision
from retain.models.detector import Detector, detection_loss, targets
from retain.strategies import make_strategy
from retain.strategies.contract import Step

LR, EPOCHS, BATCH = 1e-3, 16, 16
METHODS = {
    "finetune": [],
    "distillation (ILOD)": [{"name": "detection_distill"}],
    "pseudo-labels": [{"name": "pseudo_labels"}],
    "box replay (ABR)": [{"name": "box_replay", "memory_size": 200}],
    "pseudo-labels + distillation": [{"name": "pseudo_labels"}, {"name": "detection_distill"}],
    "pseudo-labels + box replay": [{"name": "pseudo_labels"}, {"name": "box_replay", "memory_size": 200}],
    "image replay (100 scenes)": [{"name": "replay", "memory_size": 100, "policy": "reservoir"}],
    "joint (upper bound)": ["joint"],
}
# --smoke (tests/test_benchmarks.py): the tiny backbone on 48-pixel scenes, a few of each, one epoch.
SMOKE = {"train": 12, "test": 8, "size": 48, "epochs": 1, "backbone": "tiny",
         "methods": ["finetune", "pseudo-labels + box replay", "joint (upper bound)"]}


def experience(x: torch.Tensor, y: torch.Tensor, index: int, classes: tuple[int, ...]) -> Experience:
    return Experience(x, y, x[:0], y[:0], id=index, classes=classes)


def scored(learner: DetectionLearner, images: torch.Tensor, truth: list[Boxes], groups: dict[str, list[int]]
           ) -> dict[str, dict[str, float | None]]:
    """mAP@0.5 and mAP@[.5:.95] over each group of classes."""
    found = learner.detect(images)
    return {name: mean_average_precision(found, truth, classes) for name, classes in groups.items()}


def learner_for(method: str, backbone: str, epochs: int) -> DetectionLearner:
    strategies = [make_strategy(**({"name": s} if isinstance(s, str) else s)) for s in METHODS[method]]
    torch.manual_seed(0)
    return DetectionLearner(Detector(backbone), strategies, lr=LR, epochs=epochs, batch_size=BATCH, seed=0)


def run_method(method: str, stream: DetectionStream, backbone: str, epochs: int) -> tuple[list[dict], float]:
    """The method through the stream: its mAP on every group of classes after each experience."""
    learner = learner_for(method, backbone, epochs)
    test_x, test_y = pack(stream.test)
    truth = [Boxes(b, label) for b, label in unpack(test_y)]
    exps = stream.experiences
    rows, seconds = [], 0.0
    joint = any(s.whole_stream for s in learner.strategies)
    chunks = [(len(exps) - 1, [s for e in exps for s in e.scenes], tuple(c for e in exps for c in e.classes))] \
        if joint else [(i, e.train, e.classes) for i, e in enumerate(exps)]
    for i, scenes, classes in chunks:
        start = time.perf_counter()
        learner.fit(experience(*pack(scenes), i, classes))
        seconds += time.perf_counter() - start
        old = [c for e in exps[:i] for c in e.classes]
        groups = {f"experience {j}": list(e.classes) for j, e in enumerate(exps)} | {
            "old": old, "new": list(exps[i].classes), "all": [c for e in exps[:i + 1] for c in e.classes]}
        groups = {k: v for k, v in groups.items() if v}
        for name, score in scored(learner, test_x, truth, groups).items():
            rows.append({"row": "matrix", "method": method, "after": i, "classes": name} | score)
    return rows, seconds


def summary(method: str, rows: list[dict], n: int, seconds: float) -> dict:
    """The final mAP on old, new and all classes, and ACC and forgetting of the mAP@0.5 matrix."""
    steps = sorted({r["after"] for r in rows})
    final = {r["classes"]: r for r in rows if r["after"] == steps[-1]}
    score = {(r["after"], r["classes"]): r["map50"] or 0.0 for r in rows}
    matrix = [[score.get((i, f"experience {j}"), 0.0) for j in range(n)] for i in steps]
    return {"row": "summary", "method": method,
            "final": {k: {"map50": final[k]["map50"], "map": final[k]["map"]} for k in ("old", "new", "all")
                      if k in final},
            "acc": 100 * sum(matrix[-1]) / n, "forgetting": 100 * forgetting(matrix) if len(steps) > 1 else None,
            "train_seconds": seconds}


def speed(stream: DetectionStream, backbone: str, rounds: int, steps: int) -> dict:
    """Seconds a training step takes through ``DetectionLearner.train_step`` and through a hand-written loop
    over the same detector, targets, loss and batches (AdamW, the same clip), alternating rounds; the best."""
    x, y = pack(stream.experiences[0].train, width=24)
    torch.manual_seed(0)
    base = Detector(backbone, 5)
    learner = DetectionLearner(copy.deepcopy(base), batch_size=BATCH)
    learner.seen_classes_ = list(range(5))
    plain = copy.deepcopy(base)
    mine = torch.optim.AdamW(learner.trainable, lr=LR, weight_decay=0.0)
    params = [p for p in plain.parameters() if p.requires_grad]
    theirs = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)][:steps]
    best = {"retain": float("inf"), "plain": float("inf")}
    for _ in range(rounds):
        start = time.perf_counter()
        for xb, yb in batches:
            learner.train_step(Step(xb, yb, torch.zeros(len(xb), dtype=torch.long), incoming=len(xb)), mine)
        best["retain"] = min(best["retain"], (time.perf_counter() - start) / len(batches))
        start = time.perf_counter()
        plain.train()
        for xb, yb in batches:
            out = plain(xb)
            heat, box, at = targets(unpack(yb), plain.n_classes, tuple(out.shape[-2:]))
            loss = detection_loss(out, heat, box, at)
            theirs.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, learner.clip)
            theirs.step()
        best["plain"] = min(best["plain"], (time.perf_counter() - start) / len(batches))
    return {"row": "speed", "retain_step_seconds": best["retain"], "plain_step_seconds": best["plain"],
            "ratio": best["plain"] / best["retain"], "batch": BATCH, "steps": len(batches), "rounds": rounds}


def markdown(data: dict) -> str:
    lines = [f"# Object detection (`benchmarks/detection.py`, {data['generated']})", "",
             "mAP@0.5 (and mAP@[.5:.95]) in % on the 300 test scenes after the whole stream; higher is better.",
             "", "| method | old classes | new classes | all classes | ACC | forgetting | training s |",
             "|---|---|---|---|---|---|---|"]
    cell = lambda v: "" if v is None else f"{100 * v['map50']:.1f} ({100 * v['map']:.1f})"  # noqa: E731
    for s in (r for r in data["rows"] if r["row"] == "summary"):
        forget = "" if s["forgetting"] is None else f"{s['forgetting']:.1f}"
        lines.append(f"| {s['method']} | {cell(s['final'].get('old'))} | {cell(s['final'].get('new'))} | "
                     f"{cell(s['final'].get('all'))} | {s['acc']:.1f} | {forget} | {s['train_seconds']:.0f} |")
    for r in (r for r in data["rows"] if r["row"] == "speed"):
        lines += ["", f"Training step (batch {r['batch']}): retain {1000 * r['retain_step_seconds']:.0f} ms, "
                  f"hand-written loop {1000 * r['plain_step_seconds']:.0f} ms: {r['ratio']:.2f}x the plain loop's "
                  "speed."]
    lines += ["", f"Scene generation {data['seconds']['scenes']:.0f} s (cached after), whole run "
              f"{data['seconds']['total']:.0f} s on {data['threads']} threads."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--results", help="also write the table as Markdown here")
    parser.add_argument("--only", nargs="*", help="method labels to run (default: all)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--epochs", type=int, help=f"epochs an experience (default {EPOCHS})")
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    size = SMOKE if args.smoke else {"train": 600, "test": 300, "size": 128, "epochs": EPOCHS,
                                     "backbone": "efficientnet_lite0", "methods": list(METHODS)}
    epochs = args.epochs or size["epochs"]
    start = time.perf_counter()
    stream = detection_stream(train_per_experience=size["train"], test=size["test"], size=size["size"])
    scene_seconds = time.perf_counter() - start
    rows = [speed(stream, size["backbone"], rounds=2 if args.smoke else 3, steps=2 if args.smoke else 8)]
    for method in args.only or size["methods"]:
        matrix, seconds = run_method(method, stream, size["backbone"], epochs)
        rows += matrix
        rows.append(summary(method, matrix, len(stream.experiences), seconds))
        final = rows[-1]["final"]
        print(f"{method}: mAP@0.5 " + ", ".join(f"{k} {100 * v['map50']:.1f}" for k, v in final.items())
              + f" ({seconds:.0f} s)", file=sys.stderr)
    data = {"generated": time.strftime("%Y-%m-%d"), "threads": args.threads,
            "config": {"lr": LR, "epochs": epochs, "batch": BATCH, "backbone": size["backbone"],
                       "train_per_experience": size["train"], "test": size["test"], "size": size["size"]},
            "seconds": {"scenes": scene_seconds, "total": time.perf_counter() - started}, "rows": rows}
    Path(args.out).write_text(json.dumps(data, indent=1))
    if args.results:
        Path(args.results).write_text(markdown(data))


if __name__ == "__main__":
    main()
