"""How long the store commands take from the shell, start-up and imports included: the median of a few runs each.

    python benchmarks/cli_latency.py [--repeats 5] [--out FILE]
    python benchmarks/cli_latency.py --smoke --out /tmp/cli_latency.json   # one run of each (seconds)

It makes a small store itself (digits exported as CSV, two versions of an MLP with replay), then times
``retain --version``, ``versions``, ``rollback`` and ``diff`` as a user runs them: a new ``python -m retain``
process each time, wall clock, with one torch thread. ``import torch`` alone is timed beside them: it is the
floor of a command that loads a model (``diff``). The times depend on the machine and on what else runs on it;
compare the commands of one run, or rerun a baseline in the same session (``PYTHONPATH=OTHER/src`` times
another tree with this script).
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

SMOKE = {"repeats": 1}
CONFIG = "model: {hidden: [32]}\ntraining: {epochs: 2, lr: 0.05}\nstrategies: [{name: replay, memory_size: 50}]\n"


def make_store(folder: Path) -> Path:
    """A store of two versions: digits batch 00, then batch 01."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def retain(*argv: str) -> None:
        subprocess.run([sys.executable, "-m", "retain", *argv], check=True, env=env, stdout=subprocess.DEVNULL)

    retain("export", "digits", str(folder / "csv"), "--format", "csv")
    (folder / "loop.yaml").write_text(CONFIG)
    store = folder / "store"
    retain("init", str(folder / "loop.yaml"), "--data", str(folder / "csv" / "00" / "train.csv"), "--store", str(store))
    retain("update", str(store), "--data", str(folder / "csv" / "01" / "train.csv"))
    return store


def timed(argv: list[str], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` runs of ``argv`` in a new process each."""
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    parser.add_argument("--smoke", action="store_true", help=f"the smallest run of the same code: {SMOKE}")
    args = parser.parse_args()
    repeats = SMOKE["repeats"] if args.smoke else args.repeats
    with tempfile.TemporaryDirectory(prefix="retain-cli-latency-") as tmp:
        store = str(make_store(Path(tmp)))
        retain = [sys.executable, "-m", "retain"]
        commands = {"python (start-up only)": [sys.executable, "-c", "pass"],
                    "import torch": [sys.executable, "-c", "import torch"],
                    "retain --version": [*retain, "--version"],
                    "retain versions STORE": [*retain, "versions", store],
                    "retain rollback STORE 2": [*retain, "rollback", store, "2"],  # the served version stays 2
                    "retain diff STORE 1 2": [*retain, "diff", store, "1", "2"]}
        timed(commands["retain versions STORE"], 1)  # warm the file cache
        rows = []
        print(f"{repeats} run{'s' * (repeats > 1)} of each command, a new process each\n\n"
              "| command | median s | runs (s) |\n| --- | --- | --- |")
        for name, argv in commands.items():
            seconds = timed(argv, repeats)
            rows.append({"command": name, "median_seconds": statistics.median(seconds), "seconds": seconds})
            print(f"| {name} | {rows[-1]['median_seconds']:.2f} | {', '.join(f'{s:.2f}' for s in seconds)} |",
                  flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"repeats": repeats, "python": sys.version.split()[0], "cpus": os.cpu_count(),
                                        "pythonpath": os.environ.get("PYTHONPATH", ""), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
