"""What each rehearsal trick adds to DER++ and CLS-ER, on two class-incremental streams, beside X-DER.

The tricks of Buzzega et al. 2020 ("Rethinking Experience Replay: a Bag of Tricks") as retain's options:
augmented replay (``augment``: images shifted by up to an eighth of their side), the class-balanced and
loss-aware reservoirs (``policy``), learning-rate decay within each experience (``training.lr_decay``)
and bias control of the new classes' logits (``weight_aligning``). Each is added alone to DER++ and to
CLS-ER at memory 200, on Split MNIST-5k (``class_il.py``'s protocol: fixed class order, seeds 0-2) and
on Split Fashion-MNIST with 600 images a class (``frontier.py``'s protocol: class orders 0-2, seed 0),
each stream beside cumulative training (the floor to beat). A row per method and stream: mean accuracy,
its spread, the change from the method without the trick, and its training time against DER++'s (one
process by default, so the times compare).

    python benchmarks/tricks.py --out benchmarks/results/tricks.json --results benchmarks/TRICKS.md
    python benchmarks/tricks.py --smoke --out /tmp/tricks.json   # the same code, smallest (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import class_il
import frontier

from retain.build import build_stream
from retain.experiment import run_method

DERPP = {"name": "derpp", "memory_size": 200}
CLS_ER = frontier.CLS_ER | {"memory_size": 200}
# label -> (strategies, training changes, the label of the method without the trick)
VARIANTS = {
    "derpp": ([DERPP], {}, None),
    "derpp + augment": ([DERPP | {"augment": True}], {}, "derpp"),
    "derpp + lr_decay 0.3": ([DERPP], {"lr_decay": 0.3}, "derpp"),
    "derpp + weight_aligning": ([DERPP, "weight_aligning"], {}, "derpp"),
    "derpp alpha 0.3": ([DERPP | {"alpha": 0.3}], {}, "derpp"),
    "cls_er": ([CLS_ER], {}, None),
    "cls_er + augment": ([CLS_ER | {"augment": True}], {}, "cls_er"),
    "cls_er + balanced_reservoir": ([CLS_ER | {"policy": "balanced_reservoir"}], {}, "cls_er"),
    "cls_er + loss_aware": ([CLS_ER | {"policy": "loss_aware"}], {}, "cls_er"),
    "cls_er + lr_decay 0.3": ([CLS_ER], {"lr_decay": 0.3}, "cls_er"),
    "cls_er + weight_aligning": ([CLS_ER, "weight_aligning"], {}, "cls_er"),
    "xder": ([{"name": "xder", "memory_size": 200}], {}, None),
    "cumulative": (["cumulative"], {}, None),
}
# stream -> the runs: (class order, seed)
STREAMS = {"mnist5k": [(0, 0), (0, 1), (0, 2)], "fashion_600": [(0, 0), (1, 0), (2, 0)]}
SMOKE = {"variants": ["derpp", "derpp + augment", "cls_er + loss_aware", "xder", "cumulative"],
         "runs": [(0, 0)], "per_class": 30, "epochs": 1}


def one(job: tuple) -> dict:
    label, stream, order, seed, per_class, epochs = job
    strategies, training, _ = VARIANTS[label]
    if stream == "mnist5k":
        cfg = class_il.config("mnist5k", "class_incremental", "fixed", [{"label": label, "compose": strategies}],
                              [seed], epochs)
        if per_class:
            cfg = cfg.model_copy(update={"scenario": cfg.scenario.model_copy(
                update={"max_train_per_class": per_class})})
    else:
        cfg = frontier.config(order, per_class or 600, label, strategies, seed, epochs)
    if training:  # the threads are the worker's (frontier.one_thread): run_method reads no config's
        cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update=training)})
    result = run_method(build_stream(cfg), cfg, cfg.strategies[0], seed)
    return {"row": "run", "method": label, "stream": stream, "order": order, "seed": seed,
            "acc": 100 * result.metrics.acc, "train_seconds": result.metrics.train_seconds}


def warm_up() -> None:
    """One thread a worker (as frontier.py's), and a first training that pays for setting torch up (about a
    second here), which is no method's cost."""
    frontier.one_thread()
    one(("derpp", "mnist5k", 0, 0, 10, 1))


def summary(rows: list[dict]) -> list[dict]:
    means = {}
    out = []
    for method, stream in dict.fromkeys((r["method"], r["stream"]) for r in rows):
        mine = [r for r in rows if (r["method"], r["stream"]) == (method, stream)]
        accs = [r["acc"] for r in mine]
        means[method, stream] = statistics.fmean(accs)
        out.append({"row": "summary", "method": method, "stream": stream, "acc": means[method, stream],
                    "std": statistics.pstdev(accs), "runs": len(accs),
                    "train_seconds": statistics.fmean(r["train_seconds"] for r in mine)})
    seconds = {(r["method"], r["stream"]): r["train_seconds"] for r in out}
    for r in out:
        derpp = seconds.get(("derpp", r["stream"]))
        r["time_vs_derpp"] = r["train_seconds"] / derpp if derpp else None
        base = VARIANTS[r["method"]][2]
        r["change"] = r["acc"] - means[base, r["stream"]] if (base, r["stream"]) in means else None
        r["below_cumulative"] = (means["cumulative", r["stream"]] - r["acc"]
                                 if ("cumulative", r["stream"]) in means else None)
    return out


def table(rows: list[dict]) -> str:
    streams = list(dict.fromkeys(r["stream"] for r in rows))
    lines = ["| method | " + " | ".join(f"{s}: accuracy (%) | change | below cumulative | time vs DER++"
                                       for s in streams) + " |",
             "|---|" + "---|---|---|---|" * len(streams)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for s in streams:
            r = next((r for r in rows if (r["method"], r["stream"]) == (method, s)), None)
            if r is None:
                cells += ["", "", "", ""]
                continue
            change = "" if r["change"] is None else f"{r['change']:+.1f}"
            below = "" if r["below_cumulative"] is None else f"{r['below_cumulative']:.1f}"
            ratio = "" if r["time_vs_derpp"] is None else f"{r['time_vs_derpp']:.2f}x"
            cells += [f"{r['acc']:.1f} ± {r['std']:.1f}", change, below, ratio]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON rows: every run, then a summary per method and stream")
    parser.add_argument("--results", help="a Markdown file for the table")
    parser.add_argument("--workers", type=int, default=1, help="processes running at once (one thread each)")
    parser.add_argument("--smoke", action="store_true", help="30 images a class, one run a stream (seconds)")
    args = parser.parse_args()
    variants, streams, per_class, epochs = list(VARIANTS), STREAMS, None, 3
    if args.smoke:
        variants, per_class, epochs = SMOKE["variants"], SMOKE["per_class"], SMOKE["epochs"]
        streams = {s: SMOKE["runs"] for s in STREAMS}
    jobs = [(v, s, o, seed, per_class, epochs) for v in variants for s, runs in streams.items() for o, seed in runs]
    rows, minutes = frontier.run_jobs(one, jobs, args.workers, "stream", initializer=warm_up)
    total = summary(rows)
    Path(args.out).write_text(json.dumps(rows + total, indent=1))
    if args.results:
        Path(args.results).write_text(
            "# The rehearsal tricks, one at a time\n\n" + __doc__.split("\n\n")[1] + "\n\n"
            f"Command: `python benchmarks/tricks.py --out {args.out} --results {args.results}`; {minutes:.0f} "
            f"minutes on {args.workers} processes.\n\n" + table(total) + "\n")
    print(table(total))


if __name__ == "__main__":
    main()
