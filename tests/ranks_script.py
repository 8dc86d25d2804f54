"""Trains digits with the given strategies in this process, or as one of torchrun's ranks, and
writes what the distributed tests compare: per rank, digests of the weights and the replay
memory, the accuracy matrix (rank 0), and a save (written once, by rank 0).

    python tests/ranks_script.py OUT EPOCHS MODEL NAME...       # one process
    torchrun --nproc-per-node 2 tests/ranks_script.py OUT ...   # two ranks

MODEL: ``mlp`` (digits), ``odd`` (digits, a global batch of 31 rows: shares of 16 and 15),
``frozen`` (fortunes through tiny_text's features, encoded across the ranks) or ``lora``
(fortunes, tiny_text with LoRA adapters training).
"""

import hashlib
import json
import sys
from pathlib import Path

import torch

from retain.build import build_learner, build_stream
from retain.config import RunConfig
from retain.engine import distributed


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    out, epochs, model, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    ranks = distributed.start("cpu")
    scenario = {"dataset": "digits", "n_experiences": 5} if model in ("mlp", "odd") else {
        "dataset": "fortunes_language", "n_experiences": 4, "max_train_per_class": 40, "max_test_per_class": 10}
    models = {"mlp": {"hidden": [64]}, "odd": {"hidden": [64]},
              "frozen": {"backbone": "tiny_text", "hidden": [32], "feature_cache": None},
              "lora": {"backbone": "tiny_text", "adaptation": "lora", "hidden": []}}
    cfg = RunConfig.model_validate({"scenario": scenario, "model": models[model],
                                    "training": {"epochs": epochs, "lr": 0.05,
                                                 "batch_size": {"mlp": 32, "odd": 31}.get(model, 16)},
                                    "strategies": [{"compose": [{"name": n} for n in names], "label": "m"}]})
    stream = build_stream(cfg)
    learner = build_learner(stream, cfg, cfg.strategies[0], seed=0)
    matrix = []
    for exp in stream:
        learner.fit(exp)
        matrix.append(learner.evaluate(stream) if ranks.rank == 0 else [])
    memory = learner.memories()
    found = {"rank": ranks.rank, "world": ranks.world, "steps": learner.steps_, "matrix": matrix,
             "weights": digest(learner.model.parameters()),
             "memory": digest([m.x for m in memory] + [m.y for m in memory]),
             "memory_classes": [torch.bincount(m.y).tolist() for m in memory],
             "inputs": digest([e.x_train for e in stream] + [e.x_test for e in stream])}
    learner.save(out / "saved")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{ranks.rank}.json").write_text(json.dumps(found))
    distributed.stop()


if __name__ == "__main__":
    main()
