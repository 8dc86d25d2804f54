"""``retain strategies``: every method with its family, scenarios, defaults and paper."""

from __future__ import annotations

import argparse
import json


def strategies(args: argparse.Namespace) -> int:
    """``retain strategies``: the recommended start per kind of stream, then four lines a method; or JSON."""
    from retain.strategies import RECOMMENDED, STRATEGIES, describe

    rows = [describe(cls) for cls in STRATEGIES.values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    short = {"class_incremental": "class", "task_incremental": "task", "domain_incremental": "domain"}
    width = max((len(row["name"]) for row in rows), default=0)
    print("Recommended to start from:")
    for kind, (name, settings, why) in RECOMMENDED.items():
        given = "".join(f" {k}={v}" for k, v in settings.items())
        print(f"  {short[kind]}-incremental streams: {name}{given} ({why})")
    print()
    for row in rows:
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items()) or "no parameters"
        mark = "  [recommended: " + ", ".join(short[k] for k in row["recommended_for"]) + "]" if row[
            "recommended_for"] else ""
        print(f"{row['name']:<{width}} {row['family']:<20} {'/'.join(short[s] for s in row['scenarios'])}{mark}")
        print(f"    {row['summary']}")
        print(f"    {defaults}")
        print(f"    {row['paper']}")
    return 0
