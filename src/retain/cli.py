"""The ``retain`` command line: thin wiring of config, experiment and report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from retain import __version__


def _run(args: argparse.Namespace) -> int:
    from retain.config import ConfigError, load_config
    from retain.data import DatasetNotFound
    from retain.experiment import run_experiment
    from retain.monitor import comparison_table, write_report

    try:
        cfg = load_config(args.config)
        if args.seeds:
            cfg.seeds = args.seeds
        results = run_experiment(cfg, progress=not args.quiet)
    except (ConfigError, DatasetNotFound) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(cfg.output) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    write_report(results, out)
    if not args.quiet:
        print(comparison_table(results))
    print(f"report: {out / 'report.md'}")
    return 0


def _strategies(args: argparse.Namespace) -> int:
    from retain.strategies import STRATEGIES, describe

    rows = [describe(cls) for cls in STRATEGIES.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    short = {"class_incremental": "class", "task_incremental": "task", "domain_incremental": "domain"}
    for row in rows:
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items()) or "no parameters"
        print(f"{row['name']:<13} {row['family']:<20} {'/'.join(short[s] for s in row['scenarios'])}")
        print(f"    {row['summary']}")
        print(f"    {defaults}")
        print(f"    {row['paper']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retain", description="Incremental learning without forgetting.")
    parser.add_argument("--version", action="version", version=f"retain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a YAML config and write a report folder")
    run.add_argument("config", help="YAML run config (see examples/)")
    run.add_argument("--out", help="run folder (default: <output>/<name>-<timestamp>)")
    run.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    run.add_argument("--quiet", action="store_true", help="no progress bars or table, only the report path")
    run.set_defaults(func=_run)
    listing = sub.add_parser("strategies", help="list every method: family, scenarios, defaults, paper")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_strategies)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
