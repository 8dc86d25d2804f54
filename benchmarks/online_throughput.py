"""Online ER update throughput, retain against a hand-written loop, interleaved and repeated.

    python benchmarks/online_throughput.py [--repeats 3]

Each repeat runs, for seeds 0 1 2, the plain loop of ``online.py`` and then retain's
``partial_fit`` loop (10 new + 10 replayed, one step, memory 500, one torch thread) and prints
samples/s and p99 latency of both, so the machine's own noise is visible beside the ratio.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from online import ER, config, plain_er, tight_er

from retain.build import build_stream


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stream = build_stream(config(ER, "online", 1, [0]))
    plain_er(stream, 0)
    tight_er(stream, 0)  # warm-up
    print("| repeat | seed | plain samples/s | plain p99 ms | retain samples/s | retain p99 ms | ratio |")
    print("|" + " --- |" * 7)
    ratios = []
    for r in range(args.repeats):
        for seed in (0, 1, 2):
            p, t = plain_er(stream, seed), tight_er(stream, seed)
            ratios.append(p["update_samples_per_second"] / t["update_samples_per_second"])
            print(f"| {r} | {seed} | {p['update_samples_per_second']:.0f} | {p['p99_ms']:.2f} | "
                  f"{t['update_samples_per_second']:.0f} | {t['p99_ms']:.2f} | {ratios[-1]:.2f} |", flush=True)
    print(f"\nretain's update time / plain loop's: median {np.median(ratios):.2f}")


if __name__ == "__main__":
    main()
