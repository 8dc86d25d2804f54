"""Seq-MNIST on the literature's own protocol (Mammoth's, as DER and CLS-ER report it), with its published figures.

Protocol: the full MNIST (60,000 training and 10,000 test digits, ``make data``), 5 class-incremental
experiences of two classes in order (0-1, 2-3, ...), an MLP 784-100-100-10 with one head and Glorot-uniform
weights, plain SGD (no momentum), batch 10, one epoch, no augmentation; accuracy is the mean over the five
experiences' test sets after the last (class-IL). Each method runs with the authors' best settings for its
memory size (the ``best_args`` of Mammoth and of the CLS-ER code): learning rate, memory batch, loss weights.
Seeds 0 1 2.

    python benchmarks/seq_mnist.py --out benchmarks/results/seq_mnist.json --results benchmarks/SEQ_MNIST.md
    python benchmarks/seq_mnist.py --smoke --out /tmp/seq_mnist.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from retain.data import Dataset, class_incremental
from retain.data.datasets import mnist
from retain.engine import Learner
from retain.models import make_model
from retain.strategies import make_strategy

BATCH = 10


def _derpp(memory: int, batch: int, alpha: float, beta: float) -> dict:
    return {"name": "derpp", "memory_size": memory, "batch_size": batch, "alpha": alpha, "beta": beta,
            "store": "stream", "shared": False, "max_grad_norm": None}


def _er(memory: int, batch: int) -> dict:
    return {"name": "replay", "memory_size": memory, "batch_size": batch, "weight": 1.0, "policy": "reservoir",
            "update": "stream"}


def _cls_er(memory: int, batch: int, reg: float, stable_rate: float) -> dict:
    return {"name": "cls_er", "memory_size": memory, "batch_size": batch, "reg_weight": reg,
            "plastic_rate": 1.0, "plastic_decay": 0.99, "stable_rate": stable_rate, "stable_decay": 0.99}


# (method, memory) -> (learning rate, strategies, published class-IL accuracy): DER's paper (Buzzega et al. 2020,
# Table 2: SGD, joint, ER, DER++) and CLS-ER's (Arani et al. 2022, Table 1), each with its authors' settings.
RUNS = {
    ("fine-tuning (SGD)", 0): (0.03, [], 19.66),
    ("ER", 200): (0.01, [_er(200, 10)], 80.43),
    ("ER", 500): (0.1, [_er(500, 10)], 86.12),
    ("DER++", 200): (0.03, [_derpp(200, 128, 0.2, 1.0)], 85.61),
    ("DER++", 500): (0.03, [_derpp(500, 10, 1.0, 0.5)], 91.00),
    ("CLS-ER", 200): (0.03, [_cls_er(200, 128, 2.0, 0.9)], 89.54),
    ("CLS-ER", 500): (0.1, [_cls_er(500, 32, 2.0, 0.9)], 92.05),
    ("joint (upper bound)", 0): (0.03, ["joint"], 95.57),
}
SMOKE = {"train": 600, "test": 200, "seeds": [0], "runs": [("fine-tuning (SGD)", 0), ("DER++", 200), ("CLS-ER", 200)]}


def glorot(model: torch.nn.Module) -> None:
    """Mammoth's initialisation of its MLPs: Glorot-uniform weights, zero biases (torch's default differs)."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)


def subset(data: Dataset, train: int, test: int) -> Dataset:
    """The first ``train`` and ``test`` digits (the smoke run's)."""
    return Dataset(data.name, data.x_train[:train], data.y_train[:train], data.x_test[:test], data.y_test[:test],
                   data.class_names)


def run(method: str, memory: int, data: Dataset, seed: int) -> dict:
    lr, specs, published = RUNS[(method, memory)]
    stream = class_incremental(data, 5)
    torch.manual_seed(seed)
    model = make_model("mlp", stream.input_shape, 10, hidden=(100, 100))
    glorot(model)
    strategies = [make_strategy(s) if isinstance(s, str) else make_strategy(**s) for s in specs]
    learner = Learner(model, strategies, lr=lr, momentum=0.0, batch_size=BATCH, epochs=1, seed=seed, device="cpu")
    start = time.perf_counter()
    if any(s.whole_stream for s in strategies):
        learner.fit(stream.merged())
    else:
        for experience in stream:
            learner.fit(experience)
    seconds = time.perf_counter() - start
    per_experience = learner.evaluate(stream)
    return {"row": "run", "method": method, "memory": memory, "seed": seed, "lr": lr, "strategies": specs,
            "acc": 100 * sum(per_experience) / len(per_experience), "per_experience": [100 * a for a in per_experience],
            "published": published, "train_seconds": seconds}


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for method, memory in dict.fromkeys((r["method"], r["memory"]) for r in rows):
        accs = [r["acc"] for r in rows if (r["method"], r["memory"]) == (method, memory)]
        mine = next(r for r in rows if (r["method"], r["memory"]) == (method, memory))
        out.append({"row": "summary", "method": method, "memory": memory, "acc": statistics.fmean(accs),
                    "std": statistics.pstdev(accs), "seeds": len(accs), "published": mine["published"],
                    "gap": statistics.fmean(accs) - mine["published"],
                    "train_seconds": statistics.fmean(r["train_seconds"] for r in rows
                                                      if (r["method"], r["memory"]) == (method, memory))})
    return out


def table(rows: list[dict]) -> str:
    lines = ["| method | memory | class-IL accuracy (%), mean ± std | published | difference | seconds a run |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['memory'] or ''} | {r['acc']:.2f} ± {r['std']:.2f} ({r['seeds']} seeds) | "
                     f"{r['published']:.2f} | {r['gap']:+.2f} | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def settings() -> str:
    """The settings of every row, and the command that reproduces it alone."""
    lines = ["| method | memory | learning rate | strategies (retain's names and knobs) | one row alone |",
             "|---|---|---|---|---|"]
    for (method, memory), (lr, specs, _) in RUNS.items():
        knobs = "; ".join(s if isinstance(s, str) else ", ".join(f"{k}={v}" for k, v in s.items()) for s in specs)
        command = f"`python benchmarks/seq_mnist.py --only '{method}' {memory} --out row.json`"
        lines.append(f"| {method} | {memory or ''} | {lr} | {knobs or 'none'} | {command} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON rows: every run, then a summary per method and memory")
    parser.add_argument("--results", help="a Markdown file for the table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--smoke", action="store_true", help="600 digits, one seed, three methods (seconds)")
    parser.add_argument("--only", nargs=2, metavar=("METHOD", "MEMORY"), help="one row, e.g. --only CLS-ER 200")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = mnist()
    runs, seeds = list(RUNS), args.seeds
    if args.only:
        runs = [(args.only[0], int(args.only[1]))]
        if runs[0] not in RUNS:
            parser.error(f"--only: give one of {', '.join(f'{m!r} {n}' for m, n in RUNS)}")
    if args.smoke:
        data, runs, seeds = subset(data, SMOKE["train"], SMOKE["test"]), SMOKE["runs"], SMOKE["seeds"]
    rows = []
    for method, memory in runs:
        for seed in seeds:
            rows.append(run(method, memory, data, seed))
            r = rows[-1]
            print(f"{method} {memory or ''} seed {seed}: {r['acc']:.2f} (published {r['published']:.2f}, "
                  f"{r['train_seconds']:.0f} s)", flush=True)
    total = summary(rows)
    Path(args.out).write_text(json.dumps(rows + total, indent=1))
    if args.results:
        Path(args.results).write_text(
            "# Seq-MNIST on Mammoth's protocol\n\n" + __doc__.split("\n\n")[1] + "\n\n"
            f"Command: `python benchmarks/seq_mnist.py --out benchmarks/results/seq_mnist.json --results "
            f"benchmarks/SEQ_MNIST.md`{' (smoke)' if args.smoke else ''}.\n\n" + table(total) + "\n\n"
            "The settings of each row (the authors' best for Seq-MNIST at that memory; batch 10, one epoch, plain SGD):"
            "\n\n" + settings() + "\n")
    print(table(total))


if __name__ == "__main__":
    main()
