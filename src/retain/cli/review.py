"""What waits and what was set aside: ``retain status``, ``retain quarantine list / release / drop``, and
``retain update --retry``'s listing.

``status`` and ``quarantine list`` read the store's records and review files only (no model is loaded).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from retain.cli.store import store_errors

if TYPE_CHECKING:
    from retain.store import ModelStore


def _waiting(store: ModelStore) -> list[dict[str, Any]]:
    """The batches whose candidates were kept and that no promoted version learned yet, or dropped."""
    return [{"name": p.name, "status": p.status, "rows": p.rows, "version": p.version, "source": p.source,
             "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(p.at)), "feedback": len(p.feedback),
             "why": p.detail} for p in store.pending(("pending", "held", "dropped"))]


def _quarantined(store: ModelStore) -> list[dict[str, Any]]:
    return [{"name": name, "rows": store.data_rows(name, "quarantine")} for name in store.data_names("quarantine")]


def status(args: argparse.Namespace) -> int:
    """``retain status``: the version served, the rows waiting to be learned, the rows quarantined, the feedback."""
    from retain.store import ModelStore

    with store_errors(args.store):
        store = ModelStore(args.store)
        state: dict[str, Any] = {"promoted": store.promoted(), "waiting": _waiting(store),
                                 "quarantined": _quarantined(store), "feedback": store.intake.feedback_counts()}
    if args.json:
        print(json.dumps(state, indent=1))
        return 0
    print(f"served: version {state['promoted']}")
    if state["waiting"]:
        print("batches not learned by the served version:")
        for w in state["waiting"]:
            what = {"pending": "wait for the next update", "held": f"held: retain update {args.store} --retry "
                    f"{w['name']}", "dropped": f"dropped (retain update {args.store} --retry {w['name']} learns them)"}
            print(f"  {w['name']}: {w['rows']} rows of {w['source']} (kept with version {w['version']}, "
                  f"{w['since']}) {what[w['status']]}; why: {w['why']}")
    else:
        print("every batch a version learned is learned by the served version")
    if state["quarantined"]:
        print("quarantined by the gate (retain quarantine list shows the rows):")
        for q in state["quarantined"]:
            print(f"  {q['name']}: {q['rows']} rows")
    if state["feedback"]:
        print("feedback rows: " + ", ".join(f"{n} {s}" for s, n in sorted(state["feedback"].items())))
    return 0


def quarantine(args: argparse.Namespace) -> int:
    """``retain quarantine list | release NAME | drop NAME``: review the rows the gate set aside."""
    from retain.store import ModelStore

    with store_errors(args.store):
        if args.action == "list":
            store = ModelStore(args.store)
            batches = _quarantined(store)
            rows = {b["name"]: _review(store, b["name"]) for b in batches}
            if args.json:
                print(json.dumps([b | {"review": rows[b["name"]]} for b in batches], indent=1))
                return 0
            if not batches:
                print("no rows are quarantined")
            for b in batches:
                print(f"{b['name']}: {b['rows']} rows (retain quarantine release|drop {args.store} {b['name']})")
                for row in rows[b["name"]]:
                    where = row.get("row") or row.get("file") or ""
                    came = row.get("record") or {k: row[k] for k in ("source", "target", "lang") if k in row}
                    print(f"  {where}  label {row.get('label', '')!r}  {row['why']}  {json.dumps(came)[:200]}")
            return 0
        if args.name is None:
            raise ValueError(f"retain quarantine {args.action} needs the name of the quarantined rows "
                             "(retain quarantine list shows them)")
        from retain.loop import Project

        project = Project(args.store)
        if args.action == "release":
            waiting = project.release(args.name)
            print(f"{args.name}: released; its rows wait as {waiting} and the next update learns them")
        else:
            project.drop(args.name)
            print(f"{args.name}: dropped (its review file is kept as review/{args.name}.dropped.jsonl)")
    return 0


def _review(store: ModelStore, name: str) -> list[dict[str, Any]]:
    path = store.path / "review" / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
