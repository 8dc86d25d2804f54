"""retain tune on Split Fashion-MNIST: tuned against default knobs, and 1 against 2 workers.

Protocol: Fashion-MNIST (Debian's dataset-fashion-mnist), class-incremental, 5 experiences of 2
classes, the class order shuffled with seed 7 (no default was tuned on it), 2,000 training rows
a class (the 10,000 test rows all kept), MLP 784-256-256-10, SGD lr 0.01 momentum 0.9, batch 32,
3 epochs: the foundation's protocol. Replay, DER++ and EWC are each tuned with their declared
default spaces plus lr and epochs (``retain tune``'s defaults), ``--trials`` trials each, the
no pruning (see PRUNER), trials scored on 20% validation slices of the
training rows, each trial the mean of model seeds 0 and 1. The default and the best
configuration are then trained with seeds 0, 1, 2 and scored on the test sets.

Workers: a 24-trial study of Replay on all 60,000 training rows (weight and lr searched, no
pruning, so every trial does the same work) with 1 worker (2 torch threads), then with 2 (one
thread each), wall time of each, process start and data loading included.

    python benchmarks/tune.py --out benchmarks/results/tune.json
    python benchmarks/tune.py --smoke --out /tmp/tune.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from retain.config import RunConfig
from retain.tuning import Source, tune

SCENARIO = {"dataset": "fashion_mnist", "kind": "class_incremental", "n_experiences": 5, "shuffle_seed": 7,
            "max_train_per_class": 2000}
PRUNER = "none"  # with 24 trials the percentile pruners let only 6-7 of them finish (the median: 4)
TRAINING = {"epochs": 3, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "device": "cpu", "threads": 1}
METHODS = [{"name": "replay", "memory_size": 200}, {"name": "derpp", "memory_size": 200}, "ewc"]
SEEDS = {"final_seeds": [0, 1, 2], "trial_seeds": [0, 1]}
WORKER_TRIALS = 24
# --smoke (tests/test_benchmarks.py): both studies with 2 trials, Replay alone, one seed, one epoch, 30 training
# and 20 test rows a class; the tuned-vs-default study with 1 worker (the workers study still runs 1 and 2).
SMOKE = {"trials": 2, "workers": 1, "methods": METHODS[:1], "seeds": {"final_seeds": [0], "trial_seeds": [0]},
         "rows": {"max_train_per_class": 30, "max_test_per_class": 20}, "training": TRAINING | {"epochs": 1}}


def config(name: str, strategies: list, tune_section: dict, scenario: dict = SCENARIO,
           training: dict = TRAINING) -> RunConfig:
    return RunConfig.model_validate({"name": name, "scenario": scenario, "model": {"name": "mlp", "hidden": [256, 256]},
                                     "training": training, "strategies": strategies, "tune": tune_section})


def tuned_vs_default(trials: int, workers: int, folder: Path, methods: list = METHODS, seeds: dict = SEEDS,
                     scenario: dict = SCENARIO, training: dict = TRAINING) -> list[dict]:
    cfg = config("fashion-tune", methods, {"trials": trials, **seeds, "pruner": PRUNER}, scenario, training)
    start = time.perf_counter()
    rows = tune(Source.config(cfg, folder), folder, workers=workers)
    seconds = time.perf_counter() - start
    found = []
    for r in rows:
        d, t = r["test_default"], r["test_tuned"]
        found.append({"row": "tuned_vs_default", "method": r["method"], "trials": r["trials"], "budget": trials,
                      "workers": workers, "default_params": r["default_params"], "best_params": r["best_params"],
                      "importance": r["importance"], "validation_best": r["best_validation"]["accuracy"],
                      "test_default": d["acc"], "test_default_std": d["acc_std"], "test_default_accs": d["accs"],
                      "test_tuned": t["acc"], "test_tuned_std": t["acc_std"], "test_tuned_accs": t["accs"],
                      "gain_points": 100 * (t["acc"] - d["acc"]), "study_and_report_seconds": seconds})
    return found


def workers_speedup(trials: int, folder: Path, rows: dict | None = None, training: dict = TRAINING) -> dict:
    """1 worker against 2 on all the training rows (``rows``: scenario caps of a smaller run)."""
    cfg = config("fashion-workers", [{"name": "replay", "memory_size": 200,
                                      "search": {"weight": {"low": 0.5, "high": 4.0, "log": True}}}],
                 {"trials": trials, "pruner": "none", "search": {"lr": {"low": 0.001, "high": 0.1, "log": True}}},
                 scenario={k: v for k, v in SCENARIO.items() if k != "max_train_per_class"} | (rows or {}),
                 training=training | {"threads": "auto"})
    found = {"row": "workers", "trials": trials}
    for workers in (1, 2):
        out = folder / f"workers-{workers}"
        start = time.perf_counter()
        rows = tune(Source.config(cfg, out), out, workers=workers, final=False)
        found[f"seconds_{workers}"] = time.perf_counter() - start
        found[f"best_{workers}"] = rows[0]["best_validation"]["accuracy"]
        found[f"complete_{workers}"] = rows[0]["trials"]["complete"]
    found["speedup"] = found["seconds_1"] / found["seconds_2"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--trials", type=int, default=24, help="trials per method of the tuned-vs-default study")
    parser.add_argument("--workers", type=int, default=2, help="workers of the tuned-vs-default study")
    parser.add_argument("--keep", help="keep the studies and reports in this folder")
    parser.add_argument("--only", choices=("tuned", "workers"))
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code: 2 trials, "
                        "Replay alone, one seed, one epoch, 30 training rows a class")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="retain-tune-"))
    rows = []
    trials, workers, worker_trials, tuned, speed = args.trials, args.workers, WORKER_TRIALS, {}, {}
    if args.smoke:
        trials, workers, worker_trials = SMOKE["trials"], SMOKE["workers"], SMOKE["trials"]
        tuned = {"methods": SMOKE["methods"], "seeds": SMOKE["seeds"], "scenario": SCENARIO | SMOKE["rows"],
                 "training": SMOKE["training"]}
        speed = {"rows": SMOKE["rows"], "training": SMOKE["training"]}
    try:
        if args.only != "workers":
            rows += tuned_vs_default(trials, workers, folder / "tuned", **tuned)
        if args.only != "tuned":
            rows.append(workers_speedup(worker_trials, folder, **speed))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    kinds = {r["row"] for r in rows}
    out.write_text(json.dumps([r for r in old if r["row"] not in kinds] + rows, indent=1))
    for r in rows:
        if r["row"] == "workers":
            print(f"{r['trials']} trials: 1 worker {r['seconds_1']:.0f} s, 2 workers {r['seconds_2']:.0f} s "
                  f"({r['speedup']:.2f}x); best {100 * r['best_1']:.1f} vs {100 * r['best_2']:.1f}%")
        else:
            print(f"{r['method']}: test {100 * r['test_default']:.1f} ± {100 * r['test_default_std']:.1f} default, "
                  f"{100 * r['test_tuned']:.1f} ± {100 * r['test_tuned_std']:.1f} tuned ({r['gain_points']:+.1f}); "
                  f"best {r['best_params']}")


if __name__ == "__main__":
    main()
