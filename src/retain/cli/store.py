"""The loop on a model store: ``retain init``, ``update``, ``versions``, ``rollback``, ``diff``, ``predict`` and
``evaluate``.

``versions`` and ``rollback`` read and write the store's records only (no model is loaded): they answer at once.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from retain.cli.configs import config_task, run_config
from retain.cli.errors import reported
from retain.cli.inputs import check_data, left_by_init
from retain.cli.progress import steps, watched

if TYPE_CHECKING:
    from retain.engine.generative import GenerativeLearner
    from retain.loop import Prediction, Project, UpdateResult
    from retain.models.generative import LanguageModel
    from retain.store import ModelStore


def store_errors(store: str | None = None) -> AbstractContextManager[None]:
    """What a store command reports in one line: the user's errors, and the store's, the data's and the database's
    (a full disk named with ``store``, the folder written to)."""
    from sqlalchemy.exc import SQLAlchemyError

    from retain.store import StoreError

    return reported(StoreError, ValueError, OSError, SQLAlchemyError, where=store)


def init(args: argparse.Namespace) -> int:
    """``retain init``: a new store whose version 1 learned the first batch."""
    with store_errors(args.store):
        task = config_task(args.config)
        if task != "classification":
            from retain.tasks import task_kind

            config = task_kind(task).read_config(args.config)
            methods = [m.label for m in config.methods]
        else:
            config = run_config(args, loop=True)
            methods = [m.label for m in config.strategies]
            if config.scenario.dataset != "files":
                print(f"note: scenario {config.scenario.dataset} is not used: retain init and update read --data",
                      file=sys.stderr)
        if len(methods) > 1:
            print(f"note: a store learns with one method, the first: {methods[0]}", file=sys.stderr)
        check_data(args.data)
        left_by_init(args.store, args.database, args.restart)
        progress = steps(args.progress)
        project, result = watched(progress).init(config, args.data, args.store, held_out=args.held_out,
                                                 progress=progress is not None, database=args.database)
    return _learned(args, result, project.kind.metric)


def update(args: argparse.Namespace) -> int:
    """``retain update``: a candidate learns a new batch, judged on every batch, promoted or kept."""
    with store_errors(args.store):
        if args.data is not None:
            check_data(args.data)
        progress = steps(args.progress)
        project = watched(progress)(args.store, progress is not None)
        result = project.update(args.data) if args.data is not None else project.retry(args.retry)
    return _learned(args, result, project.kind.metric)


def _score(value: float, metric: str) -> str:
    """A score (0-1) as printed: accuracy as a percentage, chrF++ in points."""
    return f"{100 * value:.1f}%" if metric == "accuracy" else f"{100 * value:.1f}"


def _learned(args: argparse.Namespace, result: UpdateResult, metric: str) -> int:
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
        print(f"held-out {metric}: " + " ".join(f"{k} {_score(a, metric)}" for k, a in result.accuracy.items()))
    return 1 if result.version is None else 0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _shown(source: str) -> str:
    """A batch's file as the table shows it: from the working folder when it lies within."""
    path = Path(source)
    try:
        return str(path.relative_to(Path.cwd())) if path.is_absolute() else source
    except ValueError:
        return source


def version_rows(store: ModelStore) -> list[dict[str, Any]]:
    """Every version of ``store`` (a :class:`~retain.store.ModelStore`) as ``retain versions`` lists it: id,
    parent, when it was made, whether it is served now (``promoted``), the promotion rule's decision and reason,
    held-out scores by batch, the data it learned, and the gate's result on that data with the rows it set aside."""
    gate = {version: detail for _, version, kind, detail in store.events() if kind == "gate" and version is not None}
    waiting = store.pending(("pending", "held", "dropped"))  # a kept version's rows no served version learned
    rows = []
    for v in store.versions():
        data = [b.source for b in v.batches if b.role == "train"]
        found = gate.get(v.id, "")
        for source in data:  # the gate's record names the file it read first
            found = found.removeprefix(f"{source}: ")
        quarantined = re.match(r"quarantined (\d+) rows", found)
        rows.append({"version": v.id, "parent": v.parent, "created": _when(v.created), "promoted": v.promoted,
                     "waiting": [f"{p.name} {p.status}" for p in waiting if p.version == v.id],
                     "decision": v.decision, "reason": v.reason, "accuracy": v.metrics.get("accuracy", {}),
                     "metric": v.metrics.get("score", "accuracy"), "data": data, "gate": found,
                     "quarantined": int(quarantined.group(1)) if quarantined else 0})
    return rows


def versions_table(rows: list[dict[str, Any]]) -> str:
    """``retain versions``' Markdown table: the version served now is marked, beside the rule's decision
    (a version promoted once may have been rolled back since)."""
    metric = rows[-1]["metric"] if rows else "accuracy"
    lines = [f"| version | created | parent | data | gate | quarantined | held-out {metric} by batch | decision | "
             "reason |", "|" + " --- |" * 9]
    for r in rows:
        scores = ", ".join(f"{k.removeprefix('batch-')}: {100 * a:.1f}" for k, a in r["accuracy"].items())
        lines.append(f"| {r['version']}{' (served now)' if r['promoted'] else ''} | {r['created']} "
                     f"| {r['parent'] or ''} | {', '.join(_shown(d) for d in r['data'])} "
                     f"| {r['gate'].split(':')[0]} | {r['quarantined'] or ''} | {scores} | {r['decision']}"
                     f"{' (rows of ' + ', '.join(r['waiting']) + ')' if r['waiting'] else ''} "
                     f"| {r['reason']} |")
    return "\n".join(lines)


def versions(args: argparse.Namespace) -> int:
    """``retain versions``: every version's time, parent, data, gate result, held-out scores and decision."""
    from retain.store import ModelStore

    with store_errors(args.store):
        rows = version_rows(ModelStore(args.store))
    print(json.dumps(rows, indent=1) if args.json else versions_table(rows))
    return 0


def rollback(args: argparse.Namespace) -> int:
    """``retain rollback``: promote the promoted version's parent, or the version named."""
    from retain.store import ModelStore

    with store_errors(args.store):
        store = ModelStore(args.store)
        with store.writer():  # as an update takes it: one writer at a time
            before = store.promoted()
            version = store.rollback(args.version)
    print(json.dumps({"promoted": version, "was": before}, indent=1) if args.json else
          f"version {version} is promoted: served from now on (version {before} was)")
    return 0


def diff(args: argparse.Namespace) -> int:
    """``retain diff``: the held-out accuracy of two versions, per batch and per class."""
    from retain.loop import Project, as_json

    with store_errors(args.store):
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

    with store_errors(args.store):
        check_data(args.data, "test")
        report = Project(args.store, progress=sys.stderr.isatty()).evaluate(args.data, args.version)
        if args.json:
            print(as_json(report))
        elif "wer" in report:
            print(f"version {report['version']}: WER {report['wer']:.1f}%, CER {report['cer']:.1f}% on "
                  f"{report['rows']} clips of {args.data}")
        elif "map50" in report:
            found = "no labelled box" if report["map50"] is None else f"mAP@0.5 {100 * report['map50']:.1f}, " \
                f"mAP@[.5:.95] {100 * report['map']:.1f}"
            print(f"version {report['version']}: {found} on {report['rows']} images of {args.data}")
            print("AP@0.5 per class: " + ", ".join(f"{k} {100 * a:.1f}" for k, a in report["per_class"].items()))
            if report["unknown_classes"]:
                print(f"classes the version does not know: {', '.join(report['unknown_classes'])}")
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
    with store_errors(args.store):
        project = Project(args.store, progress=sys.stderr.isatty())
        if project.kind.predicts_from == "sources":
            return _translate(args, project)
        if Path(args.data).is_file():
            check_data(args.data)
        _write_predictions(args, project)
    return 0


def _inputs(data: str, predictions: list[Prediction]) -> tuple[str, list[int] | list[str], list[dict[str, Any]] | None]:
    """What each prediction was made from: the name of its identity (``row``: a table's line or an array's index,
    as an integer; ``file``: an image's or clip's name within ``data``), the identities, and a table's rows
    (its columns as read) or None."""
    from retain.data.files import TABLES, _rows

    path = Path(data)
    if path.is_file() and path.suffix.lower() in TABLES:
        records = list(_rows(path))  # one prediction a record, in order: the loader reads every one
        return "row", [number for number, _ in records], [record for _, record in records]
    numbered = [m for p in predictions if (m := re.fullmatch(r"row (\d+)", p.row))]
    if len(numbered) == len(predictions):  # arrays, a datasets folder
        return "row", [int(m.group(1)) for m in numbered], None
    return "file", [p.row for p in predictions], None


def _write_predictions(args: argparse.Namespace, project: Project) -> None:
    """The predictions of ``project``'s version as ``--json`` or CSV on the screen, or in the ``--out`` file:
    each row's identity, its predictions, then (a table's) input columns, named ``input_<column>`` where they
    would take a prediction's name."""
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--out {args.out}: predictions are written as .csv or .jsonl")
    predictions = project.predict(args.data, top_k=args.top_k, version=args.version)
    if project.kind.answer_field == "boxes":
        _write_boxes(args, predictions, project)
        return
    key, identities, inputs = _inputs(args.data, predictions)
    k = len(predictions[0].top) if predictions else 1  # top_k, or every class when there are fewer
    answer = project.kind.labels if project.kind.writes_answers else "label"  # a written answer has no probability
    records = [{key: ident, answer: p.label} | ({"probability": p.top[0][1], "top": [
                   {"label": n, "probability": v} for n, v in p.top]} if p.top else {})
               | ({"input": inputs[i]} if inputs else {})
               for i, (ident, p) in enumerate(zip(identities, predictions, strict=True))]
    header = [key, answer] + (["probability"] + [f"{kind}_{i}" for i in range(2, k + 1)
                                                 for kind in ("label", "probability")] if k else [])
    columns = list(inputs[0]) if inputs else []
    table: list[list[Any]] = [header + [f"input_{c}" if c in header else c for c in columns]]
    table += [[ident, p.label] + ([p.top[0][1]] if p.top else []) + [v for pair in p.top[1:] for v in pair]
              + [row.get(c, "") for c in columns]
              for ident, p, row in zip(identities, predictions, inputs or [{}] * len(predictions), strict=True)]
    version = args.version or project.store.promoted()
    _written(args, records, table, {"out": args.out, "rows": len(records), "version": version},
             f"{len(records)} predictions of version {version} in {args.out}")


def _write_boxes(args: argparse.Namespace, predictions: list[Prediction], project: Project) -> None:
    """A detector's predictions: JSON (each image's file and boxes), JSON Lines (a line an image), or CSV rows of
    ``path,x,y,w,h,label,score``, a box a row and a row with only the path for an image with none: the table
    ``retain update`` reads, once the boxes are checked."""
    images = [{"file": p.row, "boxes": json.loads(p.label)} for p in predictions]
    table = [["path", "x", "y", "w", "h", "label", "score"]]
    for image in images:
        if not image["boxes"]:
            table.append([image["file"], "", "", "", "", "", ""])
        table += [[image["file"], *box["box"], box["label"], box["score"]] for box in image["boxes"]]
    version = args.version or project.store.promoted()
    boxes = sum(len(image["boxes"]) for image in images)
    _written(args, images, table, {"out": args.out, "rows": len(images), "boxes": boxes, "version": version},
             f"{boxes} boxes in {len(images)} images by version {version} in {args.out}")


def _written(args: argparse.Namespace, records: list[dict[str, Any]], table: list[list[Any]], done: dict[str, Any],
             said: str) -> None:
    """``records`` as JSON on the screen (``--json`` without ``--out``), or ``table`` (a header row first) as CSV on
    the screen; with ``--out``, the records as JSON Lines (``.jsonl``) or the table as CSV, then what was written
    (``done`` with ``--json``, else ``said``)."""
    import csv

    from retain.loop import as_json

    if args.json and not args.out:
        print(as_json(records))
        return
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115 - stdout is not closed
    try:
        if args.out and Path(args.out).suffix.lower() == ".jsonl":
            out.writelines(json.dumps(r) + "\n" for r in records)
        else:
            csv.writer(out).writerows(table)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(as_json(done) if args.json else said)


def _generative(folder: str) -> bool:
    """Whether ``folder`` is a generative model saved by ``retain run`` (not a store)."""
    from retain.engine.persist import LoadError, saved_kind

    try:
        return saved_kind(folder) == "generative"
    except (LoadError, OSError):
        return False


def _translate(args: argparse.Namespace, project: Project | None = None) -> int:
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
        if project is None:  # a generative model retain run saved
            from retain.tasks.translation import translations

            learner = cast("GenerativeLearner[LanguageModel]", load_learner(args.store))  # _generative: its save says
            texts = translations(learner, pairs, progress=not args.json and args.out is not None)
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
