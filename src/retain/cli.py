"""The ``retain`` command line: thin wiring of config, experiment and report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from retain import __version__


def _config(args: argparse.Namespace):
    """The run config named on the command line, with ``--seeds`` applied."""
    from retain.config import load_config

    cfg = load_config(args.config)
    if args.seeds:
        cfg.seeds = args.seeds
    return cfg


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user can cause and fix (a bad config, a missing data set or backbone package): a message, no traceback."""
    from retain.config import ConfigError
    from retain.data import DatasetNotFound

    return ConfigError, DatasetNotFound, ImportError


def _run(args: argparse.Namespace) -> int:
    from retain.experiment import run_experiment
    from retain.monitor import comparison_table, write_report

    try:
        cfg = _config(args)
        results = run_experiment(cfg, progress=not args.quiet)
    except _user_errors() as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(cfg.output) / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    write_report(results, out)
    if not args.quiet:
        print(comparison_table(results))
    print(f"report: {out / 'report.md'}")
    return 0


def _select(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from retain.config import format_errors
    from retain.experiment import compare_backbones

    try:
        cfg = _config(args)
        backbones = args.backbone or [cfg.model.backbone]
        choices = [(b, a) for b in backbones for a in args.adaptation.split(",")]
        rows = compare_backbones(cfg, choices, progress=not args.quiet)
    except ValidationError as err:
        print(f"retain: invalid choice:\n{format_errors(err)}", file=sys.stderr)
        return 2
    except _user_errors() as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    header = ("backbone", "adaptation", "method", "ACC %", "forgetting %", "update s", "features s",
              "trainable params", "peak MB")
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for r in rows:
        print(f"| {r['backbone']} | {r['adaptation']} | {r['strategy']} "
              f"| {100 * r['acc']:.1f} ± {100 * r['acc_std']:.1f} "
              f"| {100 * r['forgetting']:.1f} | {r['update_seconds']:.2f} | {r['feature_seconds']:.1f} "
              f"| {r['trainable_parameters']:,.0f} | {r['peak_mb']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
        print(f"rows: {args.out}")
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
    select = sub.add_parser("select", help="model selection: compare backbones and adaptation modes on a config")
    select.add_argument("config", help="YAML run config (its scenario and strategies are used)")
    select.add_argument("--backbone", action="append", help="backbone to compare (repeat; default: the config's)")
    select.add_argument("--adaptation", default="frozen,lora,full", help="comma-separated: frozen, lora, full")
    select.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    select.add_argument("--out", help="write the rows as JSON to this file")
    select.add_argument("--quiet", action="store_true", help="no progress bars")
    select.set_defaults(func=_select)
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
