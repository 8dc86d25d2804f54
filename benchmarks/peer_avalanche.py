"""Avalanche 0.6.0 beside retain on the foundation protocol, in one run (optional, not in CI).

    python benchmarks/peer_avalanche.py [--seeds 0 1 2] [--out benchmarks/results/peer_avalanche.json]
    python benchmarks/peer_avalanche.py --smoke --out /tmp/peer.json   # the same code, smallest (seconds)

Class-incremental Split MNIST-5k, MLP 784-256-256-10, SGD lr 0.01 momentum 0.9, batch 32,
3 epochs, 200-sample memories, one torch thread. Avalanche needs its own environment
(``torch==2.14.1 torchvision==0.29.1``, on this disk for Python 3.11, and ``quadprog`` for
its GEM); it is created in ``.venv-avalanche`` on first use (about 5.5 GB). For each method
the Avalanche run (a subprocess of that environment) and retain's namesake run back to back
on the same split, which this script writes once to a temporary ``.npz``. Timings on a shared
machine swing by tens of percent between runs, so the two sides alternate ``--repeats`` times and
each side's time is its fastest repeat (of the mean over seeds), as ``timeit`` does. For
Finetune and Replay a third side, a hand-written PyTorch loop doing Avalanche's work, joins the
alternation: its ratio to Avalanche is the floor of the time ratio (a table after the main one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / ".venv-avalanche"

# retain label -> (retain strategy config, Avalanche strategy and its arguments)
PAIRS = {
    "finetune": ("finetune", ("Naive", {})),
    "replay": ({"name": "replay", "memory_size": 200}, ("Replay", {"mem_size": 200})),
    "lwf": ("lwf", ("LwF", {"alpha": 1.0, "temperature": 2.0})),
    "ewc": ("ewc", ("EWC", {"ewc_lambda": 1000.0})),
    "si": ("si", ("SynapticIntelligence", {"si_lambda": 100.0})),
    "mas": ("mas", ("MAS", {"lambda_reg": 1.0})),
    "gem": ({"name": "gem", "memory_size": 200}, ("GEM", {"patterns_per_exp": 40, "memory_strength": 0.5})),
    "agem": ({"name": "agem", "memory_size": 200}, ("AGEM", {"patterns_per_exp": 40, "sample_size": 64})),
    "gdumb": ({"name": "gdumb", "memory_size": 200}, ("GDumb", {"mem_size": 200})),
    "icarl": ({"name": "icarl", "memory_size": 200}, ("ICaRL", {"memory_size": 200, "fixed_memory": True})),
    "der": ({"name": "der", "memory_size": 200}, ("DER", {"mem_size": 200, "alpha": 0.1, "beta": 0.5})),
    "derpp": ({"name": "derpp", "memory_size": 200}, ("DER", {"mem_size": 200, "alpha": 0.1, "beta": 0.5})),
    "cumulative": ("cumulative", ("Cumulative", {})),
}
# retain configured as Avalanche's namesake works, where retain's defaults differ: replay and iCaRL
# weigh a replayed row as one new row (retain's defaults weigh it 2 and 6), and GEM keeps
# Avalanche's 40 patterns per experience and uses all of them at every step (retain's default
# shares 200 slots and draws 16 per experience a step). DER and DER++ already replay 32 rows
# beside 32 new, as Avalanche's DER does.
MATCHED = {
    "replay": {"name": "replay", "memory_size": 200, "batch_size": 32, "weight": 1.0},
    "gem": {"name": "gem", "memory_size": 200, "per_experience": 40, "sample_size": None},
    # Avalanche's iCaRL trains on each experience's 700 samples joined with the 200 exemplars:
    # about 0.3 exemplar rows per new row.
    "icarl": {"name": "icarl", "memory_size": 200, "ratio": 0.3, "weight": 1.0},
}
# The floor: a hand-written PyTorch loop (class_il.plain_loop) doing Avalanche's work, fine-tuning
# and replaying 32 memory rows beside 32 new, timed in the same alternation. Its ratio to Avalanche
# is what a library adding nothing to the loop would score.
PLAIN = {"finetune": (0, 1.0), "replay": (32, 1.0)}
# --smoke (tests/test_benchmarks.py): Finetune and Replay (both with a plain twin, Replay also matched), one
# seed, one repeat, one epoch; Avalanche only where .venv-avalanche is already made (never made by a smoke run).
SMOKE = {"methods": ["finetune", "replay"], "seeds": [0], "repeats": 1, "epochs": 1}

WORKER = r'''
import json, sys, time
import numpy as np
import torch
from torch import nn
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset as tensors
from avalanche.training import supervised
from avalanche.training.plugins import EvaluationPlugin

torch.set_num_threads(1)
data_path, name, kwargs, seeds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
epochs = int(sys.argv[5])
d = np.load(data_path)
xtr, ytr = torch.tensor(d["x_train"]).flatten(1), torch.tensor(d["y_train"])
xte, yte = torch.tensor(d["x_test"]).flatten(1), torch.tensor(d["y_test"])
bench = nc_benchmark(tensors(xtr, ytr), tensors(xte, yte), 5, task_labels=False, shuffle=False,
                     fixed_class_order=list(range(10)))
out = []
for seed in seeds:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    common = dict(optimizer=opt, train_mb_size=32, train_epochs=epochs, eval_mb_size=1000, device="cpu",
                  evaluator=EvaluationPlugin(loggers=[]), **kwargs)
    if name == "ICaRL":  # a feature extractor and a classifier instead of one model; it predicts by class means
        strategy = supervised.ICaRL(feature_extractor=model[:4], classifier=model[4], buffer_transform=None,
                                    **common)
        model = strategy.model
    else:
        strategy = getattr(supervised, name)(model=model, criterion=nn.CrossEntropyLoss(), **common)
    seconds = 0.0
    for exp in bench.train_stream:
        start = time.perf_counter()
        strategy.train(exp)
        seconds += time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accs = [float((model(xte[(yte // 2) == k]).argmax(1) == yte[(yte // 2) == k]).float().mean())
                for k in range(5)]
    out.append({"seed": seed, "acc": float(np.mean(accs)), "train_seconds": seconds})
print(json.dumps(out))
'''


def ensure_peer_env(create: bool = True) -> Path | None:
    """The peer environment's Python, made on first use; None, saying why, when it is not made and
    ``create`` is false (a smoke run does not download several GB)."""
    python = PEER / "bin" / "python"
    if not (PEER / ".ready").is_file():
        if not create:
            print(f"Avalanche skipped: {PEER.name} is not made (a run without --smoke makes it, several GB); "
                  "retain's side runs alone", flush=True)
            return None
        print("creating .venv-avalanche (avalanche-lib 0.6.0, torch 2.14.1; several GB) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.14.1", "torchvision==0.29.1"], check=True)
        subprocess.run([*pip, "avalanche-lib==0.6.0", "quadprog"], check=True)
        (PEER / ".ready").touch()
    return python


def _ratio(ours: float, peer: float | None) -> str:
    return "n/a" if peer is None else f"{ours / peer:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate the two sides this many times; each keeps its fastest (mean s/seed)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--smoke", action="store_true", help=f"the smallest run of the same code: {SMOKE}")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    epochs = 3
    if args.smoke:
        args.methods, args.seeds, args.repeats, epochs = (SMOKE[k] for k in ("methods", "seeds", "repeats", "epochs"))

    import torch
    from class_il import config, plain_loop

    from retain.build import build_stream
    from retain.experiment import run_method

    torch.set_num_threads(1)
    python = ensure_peer_env(create=not args.smoke)
    cfg = config("mnist5k", "class_incremental", "fixed", [PAIRS[m][0] for m in args.methods], args.seeds, epochs)
    matched_cfg = config("mnist5k", "class_incremental", "fixed", list(MATCHED.values()), args.seeds, epochs)
    matched = dict(zip(MATCHED, matched_cfg.strategies, strict=True))
    stream = build_stream(cfg)
    run_method(stream, cfg, cfg.strategies[0], 0)  # warm-up, out of the timings
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "split.npz"
        merged = stream.merged()
        np.savez(data, x_train=merged.x_train.numpy(), y_train=merged.y_train.numpy(),
                 x_test=merged.x_test.numpy(), y_test=merged.y_test.numpy())
        print("| method | retain ACC % | Avalanche ACC % | retain s/seed | Avalanche s/seed | time ratio | "
              "retain set as Avalanche's: ACC % | s/seed | time ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for label, method in zip(args.methods, cfg.strategies, strict=True):
            name, kwargs = PAIRS[label][1]
            started = time.perf_counter()
            peer_times, our_times, matched_times, plain_runs, failed = [], [], [], [], None
            for _ in range(args.repeats):  # the two sides alternate, so a burst of load hits both alike
                if python is not None:
                    done = subprocess.run([str(python), "-c", WORKER, str(data), name, json.dumps(kwargs),
                                           json.dumps(args.seeds), str(epochs)], capture_output=True, text=True)
                    if done.returncode != 0:
                        failed = done.stderr.strip().splitlines()[-1]
                        break
                    peer = json.loads(done.stdout.strip().splitlines()[-1])
                    peer_times.append(float(np.mean([p["train_seconds"] for p in peer])))
                ours = [run_method(stream, cfg, method, seed).metrics for seed in args.seeds]
                our_times.append(float(np.mean([m.train_seconds for m in ours])))
                if label in matched:
                    same = [run_method(stream, cfg, matched[label], seed).metrics for seed in args.seeds]
                    matched_times.append(float(np.mean([m.train_seconds for m in same])))
                if label in PLAIN:
                    plain_runs.append([plain_loop(stream, seed, *PLAIN[label], epochs=epochs) for seed in args.seeds])
            if failed:
                print(f"| {label} | Avalanche failed: {failed} |", flush=True)
                continue
            row = {
                "scenario": "class_il_mnist5k", "strategy": label, "peer": f"avalanche.{name}",
                "acc": float(np.mean([m.acc for m in ours])), "acc_std": float(np.std([m.acc for m in ours])),
                "train_seconds": min(our_times), "train_seconds_repeats": our_times,
            }
            if peer_times:
                row |= {"peer_acc": float(np.mean([p["acc"] for p in peer])), "peer_train_seconds": min(peer_times),
                        "peer_train_seconds_repeats": peer_times}
            else:
                row["peer_skipped"] = f"{PEER.name} is not made"
            peer_s = row.get("peer_train_seconds")
            cells = "| | | |"
            if label in matched:
                row["matched_acc"] = float(np.mean([m.acc for m in same]))
                row["matched_train_seconds"], row["matched_train_seconds_repeats"] = min(matched_times), matched_times
                cells = (f"| {100 * row['matched_acc']:.1f} | {row['matched_train_seconds']:.2f} | "
                         f"{_ratio(row['matched_train_seconds'], peer_s)} |")
            if plain_runs:
                plain_times = [float(np.mean([s for _, s in run])) for run in plain_runs]
                row["plain_acc"] = float(np.mean([a for a, _ in plain_runs[0]]))
                row["plain_train_seconds"], row["plain_train_seconds_repeats"] = min(plain_times), plain_times
            row["wall_seconds"] = time.perf_counter() - started
            rows.append(row)
            peer_acc = f"{100 * row['peer_acc']:.1f}" if peer_times else "skipped"
            print(f"| {label} | {100 * row['acc']:.1f} | {peer_acc} | {row['train_seconds']:.2f} | "
                  f"{'n/a' if peer_s is None else f'{peer_s:.2f}'} | {_ratio(row['train_seconds'], peer_s)} {cells}",
                  flush=True)
    floor = [r for r in rows if "plain_train_seconds" in r]
    if floor:
        print("\nThe floor: a plain PyTorch loop doing Avalanche's work, timed in the same alternation\n")
        print("| method | plain loop ACC % | plain s/seed | plain / Avalanche | retain / plain |")
        print("| --- | --- | --- | --- | --- |")
        for r in floor:
            print(f"| {r['strategy']} | {100 * r['plain_acc']:.1f} | {r['plain_train_seconds']:.2f} | "
                  f"{_ratio(r['plain_train_seconds'], r.get('peer_train_seconds'))} | "
                  f"{r.get('matched_train_seconds', r['train_seconds']) / r['plain_train_seconds']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
