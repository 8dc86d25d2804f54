"""The loop on a model store: ``retain init``, ``update``, ``versions``, ``rollback``, ``diff``, ``predict`` and
``evaluate``."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from retain.cli.configs import is_translation, run_config
from retain.cli.errors import reported


def _store_errors() -> AbstractContextManager[None]:
    """What a store command reports in one line: the user's errors, and the store's, the data's and the database's."""
    from sqlalchemy.exc import SQLAlchemyError

    from retain.store import StoreError

    return reported(StoreError, ValueError, OSError, SQLAlchemyError)


def init(args: argparse.Namespace) -> int:
    """``retain init``: a new store whose version 1 learned the first batch."""
    from retain.loop import Project

    with _store_errors():
        if is_translation(args.config):
            from retain.translation import load_translation_config

            config = load_translation_config(args.config)
            methods = [m.label for m in config.methods]
        else:
            config = run_config(args, loop=True)
            methods = [m.label for m in config.strategies]
            if config.scenario.dataset != "files":
                print(f"note: scenario {config.scenario.dataset} is not used: retain init and update read --data",
                      file=sys.stderr)
        if len(methods) > 1:
            print(f"note: a store learns with one method, the first: {methods[0]}", file=sys.stderr)
        project, result = Project.init(config, args.data, args.store, held_out=args.held_out, progress=not args.json,
                                       database=args.database)
    return _learned(args, result, project.kind.metric)


def update(args: argparse.Namespace) -> int:
    """``retain update``: a candidate learns a new batch, judged on every batch, promoted or kept."""
    from retain.loop import Project

    with _store_errors():
        project = Project(args.store, progress=not args.json)
        result = project.update(args.data)
    return _learned(args, result, project.kind.metric)


def _score(value: float, metric: str) -> str:
    """A score (0-1) as printed: accuracy as a percentage, chrF++ in points."""
    return f"{100 * value:.1f}%" if metric == "accuracy" else f"{100 * value:.1f}"


def _learned(args: argparse.Namespace, result, metric: str) -> int:
    """What init and update print of the version they made; exit code 1: the gate refused the batch."""
    from retain.loop import as_json

    if args.json:
        print(as_json(result.__dict__))
    elif result.version is None:
        print(f"the batch was not learned: {result.reason}")
    else:
        state = "promoted" if result.promoted else "kept, not promoted"
        print(f"gate: {result.gate}")
        print(f"version {result.version}: {state} ({result.reason})")
        if result.new_classes:
            print(f"new classes: {', '.join(result.new_classes)}")
        print(" ".join(f"{k} {_score(a, metric)}" for k, a in result.accuracy.items()))
    return 1 if result.version is None else 0


def versions(args: argparse.Namespace) -> int:
    """``retain versions``: every version's parent, data, held-out scores and decision."""
    from retain.loop import Project, as_json
    from retain.monitor import versions_table

    with _store_errors():
        project = Project(args.store)
        rows = project.versions()
        print(as_json(rows) if args.json else versions_table(rows).replace("accuracy", project.kind.metric))
    return 0


def rollback(args: argparse.Namespace) -> int:
    """``retain rollback``: promote the promoted version's parent, or the version named."""
    from retain.loop import Project, as_json

    with _store_errors():
        version = Project(args.store).rollback(args.version)
        print(as_json({"promoted": version}) if args.json else f"version {version} is promoted")
    return 0


def diff(args: argparse.Namespace) -> int:
    """``retain diff``: the held-out accuracy of two versions, per batch and per class."""
    from retain.loop import Project, as_json

    with _store_errors():
        project = Project(args.store)
        rows = project.diff(args.a, args.b)
        unit = "%" if project.kind.metric == "accuracy" else project.kind.metric
        if args.json:
            print(as_json(rows))
        else:
            print(f"| held-out rows | version {args.a} {unit} | version {args.b} {unit} | change (points) |\n"
                  "| --- | --- | --- | --- |")
            for key, r in rows.items():
                print(f"| {key} | {100 * r[str(args.a)]:.1f} | {100 * r[str(args.b)]:.1f} | {100 * r['change']:+.1f} |")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``retain evaluate``: a version's accuracy on labelled data, per class."""
    from retain.loop import Project, as_json

    with _store_errors():
        report = Project(args.store, progress=not args.json).evaluate(args.data, args.version)
        if args.json:
            print(as_json(report))
        elif "chrf" in report:
            print(f"version {report['version']}: chrF++ {report['chrf']:.1f} on {report['rows']} pairs of {args.data}")
            print("per direction: " + ", ".join(f"{k} {v:.1f}" for k, v in report["per_direction"].items()))
        else:
            print(f"version {report['version']}: accuracy {100 * report['accuracy']:.1f}% on {report['rows']} "
                  f"rows of {args.data}")
            print("per class: " + ", ".join(f"{k} {100 * a:.1f}%" for k, a in report["per_class"].items()))
            if report["unknown_classes"]:
                print(f"classes the version does not know: {', '.join(report['unknown_classes'])}")
    return 0


def predict(args: argparse.Namespace) -> int:
    """``retain predict``: rows as CSV on the screen, or JSON, or a CSV / JSON Lines file."""
    from retain.loop import Project

    if _generative(args.store):
        return _translate(args)
    with _store_errors():
        project = Project(args.store, progress=not (args.json or args.out is None))
        if project.kind.writes_answers:
            return _translate(args, project)
        _write_predictions(args, project)
    return 0


def _write_predictions(args: argparse.Namespace, project) -> None:
    """The predictions of ``project``'s version as ``--json`` or CSV on the screen, or in the ``--out`` file."""
    from retain.loop import as_json

    if args.out and Path(args.out).suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--out {args.out}: predictions are written as .csv or .jsonl")
    predictions = project.predict(args.data, top_k=args.top_k, version=args.version)
    k = len(predictions[0].top) if predictions else 1  # top_k, or every class when there are fewer
    records = [{"row": p.row, "label": p.label, "probability": p.top[0][1],
                "top": [{"label": n, "probability": v} for n, v in p.top]} for p in predictions]
    if args.json and not args.out:
        print(as_json(records))
        return
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115 - stdout is not closed
    try:
        if args.out and Path(args.out).suffix.lower() == ".jsonl":
            out.writelines(json.dumps(r) + "\n" for r in records)
        else:
            import csv

            writer = csv.writer(out)
            writer.writerow(["row", "label", "probability"] + [f"{kind}_{i}" for i in range(2, k + 1)
                                                               for kind in ("label", "probability")])
            for p in predictions:
                writer.writerow([p.row, p.label, p.top[0][1]] + [v for pair in p.top[1:] for v in pair])
    finally:
        if args.out:
            out.close()
    if args.out:
        version = args.version or project.store.promoted()
        print(as_json({"out": args.out, "rows": len(records), "version": version}) if args.json else
              f"{len(records)} predictions of version {version} in {args.out}")


def _generative(folder: str) -> bool:
    """Whether ``folder`` is a generative model saved by ``retain run`` (not a store)."""
    from retain.engine.persist import LoadError, saved_kind

    try:
        return saved_kind(folder) == "generative"
    except (LoadError, OSError):
        return False


def _translate(args: argparse.Namespace, project=None) -> int:
    """``retain predict`` on a translation store's version (``project``) or on a generative model
    ``retain run`` saved: translate a JSON Lines file of sources."""
    from retain.data.catalogues import LANGUAGES
    from retain.data.files import json_lines
    from retain.engine.persist import load_learner
    from retain.store import StoreError
    from retain.tasks.translation import Pairs

    with reported(OSError, ValueError, ImportError, StoreError, user=False):
        saved = project is None
        for flag, given in (("--version", saved and args.version is not None), ("--top-k", args.top_k != 1)):
            if given:
                raise ValueError(f"{flag}: {args.store} holds a translation model, with no labels (nor versions, "
                                 "when saved by retain run)")
        if args.out and not args.out.endswith(".jsonl"):
            raise ValueError(f"--out {args.out}: translations are written as .jsonl")
        rows = []
        for i, r in json_lines(args.data):
            if not isinstance(r.get("source"), str):
                raise ValueError(f"{args.data}, line {i}: give an object with a \"source\" string")
            lang = r.get("lang", args.lang)
            if lang is None:
                raise ValueError(f"{args.data}, line {i}: no \"lang\"; name the target language there or with --lang")
            if lang not in LANGUAGES:
                raise ValueError(f"{args.data}, line {i}: lang {lang!r}; give one of {', '.join(LANGUAGES)}")
            rows.append(r)
        pairs = Pairs([r["source"] for r in rows], [""] * len(rows), [r.get("lang", args.lang) for r in rows])
        if saved:
            from retain.tasks.translation import translations

            texts = translations(load_learner(args.store), pairs, progress=not args.json and args.out is not None)
        else:
            texts = [p.label for p in project.predict(pairs, version=args.version)]
        for r, text in zip(rows, texts, strict=True):
            r["translation"] = text
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(lines)
        print(f"{len(rows)} translations in {args.out}")
    else:
        print(lines, end="")
    return 0
