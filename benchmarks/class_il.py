"""Reference protocol on MNIST-5k: class-, task- and domain-incremental, against a plain loop.

Protocol (issue 2): 5 experiences, stratified 70/30 split with seed 0, MLP 784-256-256-10,
SGD lr 0.01 momentum 0.9, batch 32, 3 epochs per experience, seeds 0 1 2, one torch thread.
Finetune and Replay are also run as hand-written PyTorch loops doing the same work, so the
learner's overhead is measured in the same process, interleaved seed by seed.

    python benchmarks/class_il.py --out benchmarks/results/class_il.json --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from retain.config import RunConfig
from retain.experiment import build_stream, run_method
from retain.models import make_model

SCENARIOS = {
    "class_il": ("class_incremental", "fixed", [
        "finetune", {"name": "replay", "memory_size": 200}, "l2", "ewc", "lwf",
        {"compose": [{"name": "growing_head"}, {"name": "replay", "memory_size": 200}],
         "label": "growing_head+replay"},
        "cumulative", "joint"]),
    "task_il": ("task_incremental", "per_task", ["finetune", "l2", "ewc", "lwf", "cumulative"]),
    "permuted": ("permuted", "fixed", [
        "finetune", "l2", "ewc", {"compose": [{"name": "ewc", "mode": "online"}], "label": "online-ewc"},
        "lwf", {"name": "replay", "memory_size": 200}, "cumulative"]),
}
PLAIN = {"finetune": 0, "replay": 64}  # label -> replayed samples per step in the plain twin


def config(kind: str, head: str, strategies: list, seeds: list[int]) -> RunConfig:
    return RunConfig.model_validate({
        "name": kind,
        "scenario": {"dataset": "mnist5k", "kind": kind, "n_experiences": 5, "split_seed": 0},
        "model": {"name": "mlp", "hidden": [256, 256], "head": head},
        "training": {"epochs": 3, "batch_size": 32, "lr": 0.01, "momentum": 0.9, "device": "cpu"},
        "strategies": strategies,
        "seeds": seeds,
    })


def plain_loop(stream, seed: int, replay: int) -> tuple[float, float]:
    """Fine-tuning (``replay=0``) or class-balanced replay of ``replay`` samples per step, in
    plain PyTorch. Returns (final average accuracy, training seconds)."""
    torch.manual_seed(seed)
    model = make_model("mlp", stream.input_shape, 10, hidden=(256, 256))
    gen = torch.Generator().manual_seed(seed)
    mem_x, mem_y = torch.empty(0, *stream.input_shape), torch.empty(0, dtype=torch.long)
    seconds = 0.0
    for exp in stream:
        start = time.perf_counter()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        t = torch.zeros(32, dtype=torch.long)
        for _ in range(3):
            order = torch.randperm(exp.n_train, generator=gen)
            for i in range(0, exp.n_train, 32):
                idx = order[i:i + 32]
                x, y = exp.x_train[idx], exp.y_train[idx]
                if replay and len(mem_y):
                    pick = torch.randperm(len(mem_y), generator=gen)[:replay]
                    x, y = torch.cat([x, mem_x[pick]]), torch.cat([y, mem_y[pick]])
                loss = F.cross_entropy(model(x, t[:1].expand(len(y))), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        if replay:  # class-balanced memory of 200: equal share per class, old samples first
            perm = torch.randperm(exp.n_train, generator=gen)
            all_x, all_y = torch.cat([mem_x, exp.x_train[perm]]), torch.cat([mem_y, exp.y_train[perm]])
            classes = all_y.unique()
            quota = [200 // len(classes) + (k < 200 % len(classes)) for k in range(len(classes))]
            keep = torch.cat([(all_y == c).nonzero().squeeze(1)[:q] for c, q in zip(classes, quota, strict=True)])
            mem_x, mem_y = all_x[keep], all_y[keep]
        seconds += time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accs = [float((model(e.x_test, e.test_tasks()).argmax(1) == e.y_test).float().mean()) for e in stream]
    return float(np.mean(accs)), seconds


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def run(scenarios: list[str], seeds: list[int]) -> list[dict]:
    warm = config("class_incremental", "fixed", ["finetune"], [0])
    run_method(build_stream(warm), warm, warm.strategies[0], 0)  # first-call costs out of the timings
    plain_loop(build_stream(warm), 0, 0)
    rows = []
    for name in scenarios:
        kind, head, strategies = SCENARIOS[name]
        cfg = config(kind, head, strategies, seeds)
        stream = build_stream(cfg)
        for method in cfg.strategies:
            runs, plain = [], []
            for seed in seeds:
                runs.append(run_method(stream, cfg, method, seed))
                if name == "class_il" and method.label in PLAIN:
                    plain.append(plain_loop(stream, seed, PLAIN[method.label]))
            metrics = [r["metrics"] for r in runs]
            acc = [m["acc"] for m in metrics]
            row = {
                "scenario": f"{name}_mnist5k", "strategy": method.label,
                "acc": float(np.mean(acc)), "acc_std": float(np.std(acc)),
                "forgetting": _mean([m["forgetting"] for m in metrics]),
                "bwt": _mean([m["bwt"] for m in metrics]),
                "train_seconds": float(np.mean([m["train_seconds"] for m in metrics])),
                "peak_mb": float(np.max([m["peak_mb"] for m in metrics])),
            }
            if plain:
                row["plain_acc"] = float(np.mean([p[0] for p in plain]))
                row["plain_seconds"] = float(np.mean([p[1] for p in plain]))
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


HEADER = ("| scenario | strategy | ACC % | ± | forgetting % | BWT % | train s/seed | plain loop s | overhead |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def _line(row: dict) -> str:
    plain = row.get("plain_seconds")
    over = f"{row['train_seconds'] / plain:.2f}×" if plain else ""
    return (f"| {row['scenario']} | {row['strategy']} | {_pct(row['acc'])} | {_pct(row['acc_std'])} | "
            f"{_pct(row['forgetting'])} | {_pct(row['bwt'])} | {row['train_seconds']:.2f} | "
            f"{f'{plain:.2f}' if plain else ''} | {over} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the rows as a JSON list")
    parser.add_argument("--results", type=Path, help="write the table as Markdown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(HEADER)
    rows = run(args.scenarios, args.seeds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    if args.results:
        table = "\n".join([HEADER, *(_line(r) for r in rows)])
        args.results.write_text(
            "# Benchmark: MNIST-5k, foundation protocol\n\n"
            "Generated by `python benchmarks/class_il.py --out benchmarks/results/class_il.json "
            "--results benchmarks/RESULTS.md`.\n\n"
            f"Seeds {args.seeds}, {args.threads} torch thread(s), {time.strftime('%Y-%m-%d')}. "
            "`overhead` = learner training time / plain PyTorch loop doing the same work (same run).\n\n"
            + table + "\n"
        )


if __name__ == "__main__":
    main()
