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


def config(strategies: list, batch: int):
    from retain.config import RunConfig

    return RunConfig.model_validate({
        "name": "ddp", "scenario": SCENARIO, "model": {"name": "mlp", "hidden": [256, 256]},
        "training": {"epochs": EPOCHS, "batch_size": batch, "lr": 0.01, "momentum": 0.9, "device": "cpu"},
        "strategies": [{"compose": strategies, "label": "m"}]})


def plain_loop(stream, batch: int, ranks) -> float:
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
        for _ in range(EPOCHS):
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
    """One launch: run under torchrun (1 or 2 ranks); rank 0 writes the rows."""
    from retain.build import build_stream
    from retain.engine import distributed
    from retain.experiment import run_method

    ranks = distributed.start("cpu")
    if ranks.world == 1:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = []
    stream = build_stream(config(["finetune"], 32))
    if job["kind"] == "speed":
        for batch in SPEED_BATCHES:
            cfg = config(["finetune"], batch)
            run = run_method(stream, cfg, cfg.strategies[0], 0)
            epochs = EPOCHS * len(stream)
            rows.append({"kind": "retain", "batch": batch, "ranks": ranks.world,
                         "epochs_per_second": epochs / run.metrics.train_seconds, "acc": run.metrics.acc})
            rows.append({"kind": "plain", "batch": batch, "ranks": ranks.world,
                         "epochs_per_second": epochs / plain_loop(stream, batch, ranks)})
    else:
        for name, strategies in METHODS.items():
            cfg = config(strategies, 32)
            for seed in SEEDS:
                learner_run = run_method(stream, cfg, cfg.strategies[0], seed)
                rows.append({"method": name, "seed": seed, "ranks": ranks.world, "acc": learner_run.metrics.acc,
                             "train_seconds": learner_run.metrics.train_seconds})
    if ranks.rank == 0:
        Path(job["out"]).write_text(json.dumps(rows))
    distributed.stop()


def launch(kind: str, nproc: int, folder: Path) -> list[dict]:
    out = folder / f"{kind}-{nproc}-{time.monotonic_ns()}.json"
    job = folder / f"job-{time.monotonic_ns()}.json"
    job.write_text(json.dumps({"kind": kind, "out": str(out)}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--job", str(job)]
    subprocess.run(command, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("speed", "accuracy"))
    args = parser.parse_args()
    if args.job:
        return rank_job(json.loads(Path(args.job).read_text()))
    folder = Path(tempfile.mkdtemp(prefix="retain-ddp-"))
    rows = []
    if args.only != "accuracy":
        runs = [r for n in (1, 2, 2, 1, 1, 2) for r in launch("speed", n, folder)]
        for kind in ("retain", "plain"):
            for batch in SPEED_BATCHES:
                best = {n: max(r["epochs_per_second"] for r in runs
                               if r["kind"] == kind and r["batch"] == batch and r["ranks"] == n) for n in (1, 2)}
                rows.append({"row": "speed", "kind": kind, "batch": batch, "epochs_per_second_1": best[1],
                             "epochs_per_second_2": best[2], "speedup": best[2] / best[1]})
        for batch in SPEED_BATCHES:
            ours = next(r for r in rows if r["row"] == "speed" and r["kind"] == "retain" and r["batch"] == batch)
            floor = next(r for r in rows if r["row"] == "speed" and r["kind"] == "plain" and r["batch"] == batch)
            ours["speedup_of_plain"] = ours["speedup"] / floor["speedup"]
    if args.only != "speed":
        runs = launch("accuracy", 1, folder) + launch("accuracy", 2, folder)
        for name in METHODS:
            accs = {n: [r["acc"] for r in runs if r["method"] == name and r["ranks"] == n] for n in (1, 2)}
            secs = {n: [r["train_seconds"] for r in runs if r["method"] == name and r["ranks"] == n] for n in (1, 2)}
            rows.append({"row": "accuracy", "method": name, "seeds": SEEDS, "acc_1": statistics.fmean(accs[1]),
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
