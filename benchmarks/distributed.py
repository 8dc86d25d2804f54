"""retain across 2 ranks (torchrun, DDP with gloo) against 1, and a plain DDP loop as the floor.

Protocol: Split Fashion-MNIST, class-incremental, 5 experiences, class order shuffled with seed 7,
2,000 training rows a class (all 10,000 test rows), MLP 784-256-256-10, SGD lr 0.01 momentum 0.9.

- **Speed**: Finetune, 3 epochs an experience, global batch 32 (the protocol) and 256. Epochs per
  second of training (every experience's epochs over the training seconds) with 1 rank (2 torch
  threads) and with 2 ranks (1 thread each), for retain and for a plain loop written here: the
  same MLP, the same global batches dealt out the same way, ``DistributedDataParallel`` and
  ``torch.optim.SGD``. Launches alternate 1, 2, 2, 1, 1, 2 ranks; the fastest of the three runs counts.
- **Accuracy**: Finetune, Replay (200), DER++ (200) and EWC, 3 epochs, global batch 32, seeds 0-2,
  1 rank against 2 ranks: final average accuracy on the test sets.

    python benchmarks/distributed.py --out benchmarks/results/distributed.json
    python benchmarks/distributed.py --smoke --out /tmp/distributed.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SCENARIO = {"dataset": "fashion_mnist", "kind": "class_incremental", "n_experiences": 5, "shuffle_seed": 7,
            "max_train_per_class": 2000}
METHODS = {"finetune": ["finetune"], "replay": [{"name": "replay", "memory_size": 200}],
           "derpp": [{"name": "derpp", "memory_size": 200}], "ewc": ["ewc"]}
SEEDS = [0, 1, 2]
SPEED_BATCHES = [32, 256]
EPOCHS = 3
# What a run measures, sent to every rank in its job file.
FULL = {"scenario": SCENARIO, "epochs": EPOCHS, "methods": list(METHODS), "seeds": SEEDS, "batches": SPEED_BATCHES,
        "launches": [1, 2, 2, 1, 1, 2]}
# --smoke (tests/test_benchmarks.py): one launch of 1 rank and one of 2, each measuring speed and accuracy;
# Finetune and Replay, one seed, one epoch, 30 training and 20 test rows a class.
SMOKE = FULL | {"scenario": SCENARIO | {"max_train_per_class": 30, "max_test_per_class": 20}, "epochs": 1,
                "methods": ["finetune", "replay"], "seeds": [0], "launches": [1, 2]}


def config(strategies: list, batch: int, plan: dict = FULL):
    from retain.config import RunConfig

    return RunConfig.model_validate({
        "name": "ddp", "scenario": plan["scenario"], "model": {"name": "mlp", "hidden": [256, 256]},
        "training": {"epochs": plan["epochs"], "batch_size": batch, "lr": 0.01, "momentum": 0.9, "device": "cpu"},
        "strategies": [{"compose": strategies, "label": "m"}]})


def plain_loop(stream, batch: int, ranks, epochs: int = EPOCHS) -> float:
    """Training seconds of a hand-written loop doing Finetune's work, with DDP when there are ranks."""
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    dims = [784, 256, 256, 10]
    layers = []
    for a, b in zip(dims, dims[1:], strict=False):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(torch.nn.Flatten(), *layers[:-1])
    forward = DistributedDataParallel(model) if ranks.world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    seconds = 0.0
    for exp in stream:
        start = time.perf_counter()
        x, y = exp.x_train, exp.y_train
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            for first in range(0, len(y), batch):
                idx = order[first:first + batch]
                if len(idx) < ranks.world:
                    continue
                mine = idx[ranks.rank::ranks.world]
                loss = F.cross_entropy(forward(x[mine]), y[mine])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        seconds += time.perf_counter() - start
    return seconds


def rank_job(job: dict) -> None:
    """One launch: run under torchrun (1 or 2 ranks) the job's kinds of rows; rank 0 writes them."""
    from retain.build import build_stream
    from retain.engine import distributed
    from retain.experiment import run_method

    plan = job["plan"]
    ranks = distributed.start("cpu")
    if ranks.world == 1:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = []
    stream = build_stream(config(["finetune"], 32, plan))
    if "speed" in job["kinds"]:
        for batch in plan["batches"]:
            cfg = config(["finetune"], batch, plan)
            run = run_method(stream, cfg, cfg.strategies[0], 0)
            epochs = plan["epochs"] * len(stream)
            rows.append({"kind": "retain", "batch": batch, "ranks": ranks.world,
                         "epochs_per_second": epochs / run.metrics.train_seconds, "acc": run.metrics.acc})
            rows.append({"kind": "plain", "batch": batch, "ranks": ranks.world,
                         "epochs_per_second": epochs / plain_loop(stream, batch, ranks, plan["epochs"])})
    if "accuracy" in job["kinds"]:
        for name in plan["methods"]:
            cfg = config(METHODS[name], 32, plan)
            for seed in plan["seeds"]:
                learner_run = run_method(stream, cfg, cfg.strategies[0], seed)
                rows.append({"method": name, "seed": seed, "ranks": ranks.world, "acc": learner_run.metrics.acc,
                             "train_seconds": learner_run.metrics.train_seconds})
    if ranks.rank == 0:
        Path(job["out"]).write_text(json.dumps(rows))
    distributed.stop()


def launch(kinds: list[str], nproc: int, folder: Path, plan: dict) -> list[dict]:
    """The rows of one torchrun launch of ``nproc`` ranks running ``kinds`` ("speed", "accuracy")."""
    out = folder / f"{'-'.join(kinds)}-{nproc}-{time.monotonic_ns()}.json"
    job = folder / f"job-{time.monotonic_ns()}.json"
    job.write_text(json.dumps({"kinds": kinds, "out": str(out), "plan": plan}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--job", str(job)]
    subprocess.run(command, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("speed", "accuracy"))
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code: one launch of "
                        "1 rank and one of 2, Finetune and Replay, one seed, one epoch, 30 training rows a class")
    args = parser.parse_args()
    if args.job:
        return rank_job(json.loads(Path(args.job).read_text()))
    folder = Path(tempfile.mkdtemp(prefix="retain-ddp-"))
    plan = SMOKE if args.smoke else FULL
    wanted = [k for k in ("speed", "accuracy") if args.only in (None, k)]
    if args.smoke:  # each launch runs both kinds: a launch costs seconds, the smoke run's training less
        runs = [r for n in plan["launches"] for r in launch(wanted, n, folder, plan)]
    else:
        runs = [r for n in plan["launches"] for r in launch(["speed"], n, folder, plan)] if "speed" in wanted else []
        if "accuracy" in wanted:
            runs += launch(["accuracy"], 1, folder, plan) + launch(["accuracy"], 2, folder, plan)
    speed, accuracy = [r for r in runs if "kind" in r], [r for r in runs if "method" in r]
    rows = []
    if "speed" in wanted:
        for kind in ("retain", "plain"):
            for batch in plan["batches"]:
                best = {n: max(r["epochs_per_second"] for r in speed
                               if r["kind"] == kind and r["batch"] == batch and r["ranks"] == n) for n in (1, 2)}
                rows.append({"row": "speed", "kind": kind, "batch": batch, "epochs_per_second_1": best[1],
                             "epochs_per_second_2": best[2], "speedup": best[2] / best[1]})
        for batch in plan["batches"]:
            ours = next(r for r in rows if r["row"] == "speed" and r["kind"] == "retain" and r["batch"] == batch)
            floor = next(r for r in rows if r["row"] == "speed" and r["kind"] == "plain" and r["batch"] == batch)
            ours["speedup_of_plain"] = ours["speedup"] / floor["speedup"]
    if "accuracy" in wanted:
        for name in plan["methods"]:
            accs = {n: [r["acc"] for r in accuracy if r["method"] == name and r["ranks"] == n] for n in (1, 2)}
            secs = {n: [r["train_seconds"] for r in accuracy if r["method"] == name and r["ranks"] == n]
                    for n in (1, 2)}
            rows.append({"row": "accuracy", "method": name, "seeds": plan["seeds"], "acc_1": statistics.fmean(accs[1]),
                         "acc_2": statistics.fmean(accs[2]), "accs_1": accs[1], "accs_2": accs[2],
                         "difference_points": 100 * (statistics.fmean(accs[2]) - statistics.fmean(accs[1])),
                         "train_seconds_1": statistics.fmean(secs[1]), "train_seconds_2": statistics.fmean(secs[2])})
    for r in rows:
        print(json.dumps(r))
    if args.out:
        out = Path(args.out)
        old = json.loads(out.read_text()) if out.exists() else []
        kinds = {r["row"] for r in rows}
        out.write_text(json.dumps([r for r in old if r["row"] not in kinds] + rows, indent=1))


if __name__ == "__main__":
    main()
