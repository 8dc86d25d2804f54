"""Online ER update throughput, retain against a hand-written loop, interleaved and repeated.

    python benchmarks/online_throughput.py [--repeats 3] [--out FILE]
    python benchmarks/online_throughput.py --smoke --out /tmp/online_throughput.json   # smallest (seconds)

Each repeat runs, for seeds 0 1 2, the plain loop of ``online.py`` and then retain's
``partial_fit`` loop (10 new + 10 replayed, one step, memory 500, one torch thread) and prints
samples/s and p99 latency of both, so the machine's own noise is visible beside the ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from online import ER, config, plain_er, tight_er

from retain.build import build_stream

# --smoke (tests/test_benchmarks.py): one repeat of one seed on 100 training rows a class.
SMOKE = {"repeats": 1, "seeds": [0], "rows": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the rows (one per repeat and seed, then the median) as JSON")
    parser.add_argument("--smoke", action="store_true", help=f"the smallest run of the same code: {SMOKE}")
    args = parser.parse_args()
    repeats, seeds, per_class = (SMOKE["repeats"], SMOKE["seeds"], SMOKE["rows"]) if args.smoke else (
        args.repeats, [0, 1, 2], None)
    torch.set_num_threads(1)
    stream = build_stream(config(ER, "online", 1, [0], rows=per_class))
    plain_er(stream, 0)
    tight_er(stream, 0)  # warm-up
    print("| repeat | seed | plain samples/s | plain p99 ms | retain samples/s | retain p99 ms | ratio |")
    print("|" + " --- |" * 7)
    rows = []
    for r in range(repeats):
        for seed in seeds:
            p, t = plain_er(stream, seed), tight_er(stream, seed)
            rows.append({"row": "repeat", "repeat": r, "seed": seed,
                         "plain_samples_per_second": p["update_samples_per_second"], "plain_p99_ms": p["p99_ms"],
                         "retain_samples_per_second": t["update_samples_per_second"], "retain_p99_ms": t["p99_ms"],
                         "ratio": p["update_samples_per_second"] / t["update_samples_per_second"]})
            print(f"| {r} | {seed} | {p['update_samples_per_second']:.0f} | {p['p99_ms']:.2f} | "
                  f"{t['update_samples_per_second']:.0f} | {t['p99_ms']:.2f} | {rows[-1]['ratio']:.2f} |", flush=True)
    median = float(np.median([r["ratio"] for r in rows]))
    print(f"\nretain's update time / plain loop's: median {median:.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([*rows, {"row": "median", "ratio": median}], indent=1))


if __name__ == "__main__":
    main()
