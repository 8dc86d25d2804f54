"""The ``retain`` command line: thin wiring of config, experiment and report."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from retain import __version__


def _config(args: argparse.Namespace, loop: bool = False):
    """The run config named on the command line, with ``--seeds`` applied; ``loop``: for ``retain
    init`` (its data comes from ``--data``)."""
    from retain.config import load_config

    cfg = load_config(args.config, loop=loop)
    if args.seeds:
        cfg.seeds = args.seeds
    return cfg


class RunFolderError(ValueError):
    """The run's output folder cannot be used; the message says why and what to do."""


def _run_folder(cfg, out: str | None, resume: bool) -> Path:
    """The folder a run writes to, checked and created before any training: ``--out``, else a new
    ``<output>/<name>-<time>`` inside the output root (the name cannot lead outside it). A folder
    holding another run's files is refused unless resuming it; ``--resume`` without ``--out``
    takes the newest folder of the run's name."""
    from retain.util import slug

    root = Path(cfg.output)
    name = slug(cfg.name)
    if out is not None:
        folder = Path(out)
    elif resume:
        own = re.compile(rf"{re.escape(name)}-\d{{8}}-\d{{6}}(-\d+)?")
        previous = sorted((p for p in root.glob(f"{name}-*") if own.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)
        if not previous:
            raise RunFolderError(f"--resume: no earlier run named {name} in {root}")
        folder = previous[-1]
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        root.mkdir(parents=True, exist_ok=True)
        for k in range(1, 1000):  # two runs in the same second get separate folders: mkdir claims one
            folder = root / f"{name}-{stamp}" if k == 1 else root / f"{name}-{stamp}-{k}"
            if root.resolve() not in folder.resolve().parents:
                raise RunFolderError(f"run name {cfg.name!r} would write outside the output folder {root}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
    if folder.is_dir() and any(folder.iterdir()) and not resume:
        raise RunFolderError(f"{folder} already holds files; choose another --out, or pass --resume to finish the "
                             "run it holds")
    if resume and folder.is_dir() and any(folder.iterdir()) and not (folder / "results.json").is_file():
        raise RunFolderError(f"{folder} holds files but no results.json: it is not a run to resume")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunFolderError(f"cannot write the run's results to {folder}: {err.strerror}") from None
    return folder


def _finished_methods(cfg, folder: Path) -> dict:
    """The methods an interrupted run in ``folder`` already finished, if it ran this very config."""
    from retain.metrics import ExperimentResult

    path = folder / "results.json"
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
        previous = ExperimentResult.from_dict(saved)
    except (ValueError, KeyError, TypeError) as err:
        raise RunFolderError(f"{path} cannot be resumed: it is damaged ({err})") from None
    if previous.config != cfg.model_dump(mode="json") or previous.seeds != cfg.seeds:
        raise RunFolderError(f"{folder} holds a run of another config; start a new run (or pass its own config)")
    return previous.methods


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user can cause and fix (a bad config, a missing data set or backbone package): a message, no traceback."""
    from retain.config import ConfigError
    from retain.data import DatasetNotFound
    from retain.data.files import FileError
    from retain.engine.learner import Diverged

    return ConfigError, DatasetNotFound, ImportError, RunFolderError, FileError, Diverged


def _run(args: argparse.Namespace) -> int:
    from retain.engine import distributed
    from retain.experiment import run_experiment
    from retain.monitor import comparison_table, write_report, write_results

    if _is_translation(args.config):
        return _run_translation(args)
    if args.nproc > 1 and not distributed.launched():
        return _launch_ranks(args)
    try:
        cfg = _config(args)
        ranks = distributed.start(cfg.training.device)
    except _user_errors() as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    main_rank = ranks.rank == 0
    try:
        problem, out, done = None, None, {}
        if main_rank:
            try:
                out = _run_folder(cfg, args.out, args.resume)
                _check_ranks(cfg, ranks.world)
                if ranks.world > 1:
                    batch = cfg.training.batch_size
                    print(f"{ranks.world} ranks ({distributed.backend()}): global batch {batch} "
                          f"({batch // ranks.world}{'' if batch % ranks.world == 0 else f'-{-(-batch // ranks.world)}'}"
                          f" rows a rank), lr {cfg.training.lr}", file=sys.stderr)
                done = _finished_methods(cfg, out) if args.resume else {}
            except _user_errors() as err:
                problem = str(err)
        # Rank 0 decides; the others learn its decision (or its error) before any collective step.
        problem, finished = distributed.share((problem, sorted(done)))
        if problem:
            raise RunFolderError(problem)
        done = done if main_rank else dict.fromkeys(finished)
        if done and main_rank:
            print(f"resuming {out}: {', '.join(done)} already done", file=sys.stderr)
        results = run_experiment(cfg, progress=not args.quiet and main_rank, done=done,
                                 on_method=lambda r: write_results(r, out) if main_rank else None)
    except _user_errors() as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    finally:
        distributed.stop()
    if not main_rank:
        return 0
    write_report(results, out)
    if not args.quiet:
        print(comparison_table(results))
    if results.stream.read_as:
        print(f"tables read as: {results.stream.read_as} (name them under scenario.files)")
    print(f"report: {out / 'report.md'}")
    return 0


def _is_translation(path: str) -> bool:
    from retain.config import ConfigError, read_yaml

    try:
        return read_yaml(path).get("task") == "translation"
    except ConfigError:
        return False  # the run config's own reading reports what is wrong with the file


def _run_translation(args: argparse.Namespace) -> int:
    """``retain run`` on a ``task: translation`` config: the continual translation stream."""
    from retain.data.catalogues import CatalogueError
    from retain.translation import load_translation_config, run_translation, translation_table, write_translation_report

    try:
        for flag, given in (("--nproc", args.nproc > 1), ("--resume", args.resume), ("--seeds", args.seeds)):
            if given:
                raise RunFolderError(f"{flag}: a translation run takes one process and the seed: in its config")
        cfg = load_translation_config(args.config)
        out = _run_folder(cfg, args.out, False)
        results, extras = run_translation(cfg, progress=not args.quiet, out=out,
                                          on_method=lambda r, e: write_translation_report(r, e, out))
    except (*_user_errors(), CatalogueError, FileNotFoundError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    write_translation_report(results, extras, out)
    if not args.quiet:
        print(translation_table(results, extras))
    print(f"report: {out / 'report.md'}")
    return 0


def _check_ranks(cfg, world: int) -> None:
    """Refuse, before any training, what cannot run across ``world`` ranks."""
    from retain.engine import distributed

    if world == 1:
        return
    for i, method in enumerate(cfg.strategies):
        problem = distributed.problem(method.build(cfg.model.head), cfg.mode)
        if problem:
            raise RunFolderError(f"--nproc: strategies.{i}: {problem}")
    if cfg.training.batch_size < world:
        raise RunFolderError(f"--nproc: training.batch_size {cfg.training.batch_size} is smaller than the "
                             f"{world} ranks")


def _launch_ranks(args: argparse.Namespace) -> int:
    """``retain run --nproc N``: the same command under torchrun, N processes on this machine."""
    import subprocess


    try:
        cfg = _config(args)
        _check_ranks(cfg, args.nproc)
        out = _run_folder(cfg, args.out, args.resume)
    except _user_errors() as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "retain", "run", args.config, "--out", str(out)]
    command += (["--seeds", *map(str, args.seeds)] if args.seeds else []) + (["--quiet"] if args.quiet else []) \
        + (["--resume"] if args.resume else [])
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # each rank sets its share of the cores itself
    return subprocess.call(command, env=env)


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


def _tune(args: argparse.Namespace) -> int:
    import torch

    from retain.tuning import Source, TuneError, optimize, storage_url, tune

    try:
        source = Source.read(args.source)
        if args.trials:
            source.cfg.tune.trials = args.trials
        out = Path(args.out or Path(source.cfg.output) / f"{source.cfg.name}-tune")
        if args.worker is not None:  # one of the processes `--workers` started: trials only
            torch.set_num_threads(args.threads)
            optimize(source, storage_url(args.storage, out), worker=args.worker)
            return 0
        if args.apply and (source.kind != "store" or args.no_final):
            raise TuneError("--apply retunes a model store, after the test-set comparison (without --no-final)")
        if (out / "study.db").exists() and args.storage is None:
            print(f"resuming the study in {out / 'study.db'}", file=sys.stderr)
        rows = tune(source, out, workers=args.workers, storage=args.storage, progress=not args.quiet,
                    final=not args.no_final)
    except (TuneError, *_user_errors()) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retain: interrupted; run the same command again to resume the study", file=sys.stderr)
        return 130
    for r in rows:
        best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["best_params"].items())
        line = f"{r['method']}: validation {100 * r['best_validation']['accuracy']:.1f}% with {best or 'the defaults'}"
        if "test_tuned" in r:
            d, t = r["test_default"]["acc"], r["test_tuned"]["acc"]
            line += f"; test {100 * d:.1f}% default -> {100 * t:.1f}% tuned"
        print(line)
    print("best config: " + (str(out / "best.yaml") if len(rows) == 1 else ", ".join(str(out / r["best_config"])
                                                                                 for r in rows)))
    print(f"report: {out / 'report.md'}")
    if args.apply:
        _apply_tuning(args.source, rows[0], out)
    return 0


def _apply_tuning(store: str, row: dict, out: Path) -> None:
    """``retain tune STORE --apply``: the best knobs become the store's, if they beat its own on the test rows."""
    from retain.config import load_config
    from retain.loop import Project

    tuned, default = row["test_tuned"]["acc"], row["test_default"]["acc"]
    if tuned <= default:
        print(f"not applied: the tuned knobs scored {100 * tuned:.1f}% on the held-out test rows, the store's own "
              f"{100 * default:.1f}%")
        return
    best = load_config(out / row["best_config"], loop=True)
    Project(store).retune(best, f"retain tune: {row['best_params']} ({100 * default:.1f}% -> {100 * tuned:.1f}% on "
                                f"held-out test rows); report {out / 'report.md'}")
    print(f"applied: the next update of {store} trains with the tuned knobs")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _export(args: argparse.Namespace) -> int:
    from retain.data.export import export

    if args.dataset == "translations":
        return _export_translations(args)
    try:
        folder = export(args.dataset, args.folder, args.format, kind=args.kind, n_experiences=args.experiences,
                        test_fraction=args.test_fraction, split_seed=args.split_seed,
                        max_train_per_class=args.max_train_per_class, max_test_per_class=args.max_test_per_class)
    except (*_user_errors(), ValueError, OSError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    batches = sorted(p.name for p in folder.iterdir() if p.is_dir())
    print(f"{args.dataset} as {args.format}: {len(batches)} batches ({', '.join(batches)}) in {folder}")
    print(f"train on it with a config whose scenario is {{dataset: files, path: {folder}}}")
    return 0


def _export_translations(args: argparse.Namespace) -> int:
    """The translation stream of Debian's catalogues as JSON Lines, one folder per direction."""
    from retain.data.catalogues import CatalogueError, export_jsonl, load_corpus

    try:
        if args.format != "jsonl":
            raise CatalogueError(f"--format {args.format}: the translation corpus is written as jsonl")
        corpus = load_corpus(n_train=args.max_train_per_class or 10**9, n_test=args.max_test_per_class or 10**9)
        folder = export_jsonl(corpus, args.folder)
    except (CatalogueError, OSError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{d.name} {len(d.train)}/{len(d.test)}" for d in corpus.directions)
    print(f"translation pairs (train/test): {sizes} in {folder}; sizes, packages and licences in corpus.json")
    return 0


def _translate(args: argparse.Namespace) -> int:
    """``retain predict`` on a saved generative model: translate a JSON Lines file of sources."""
    from retain.data.catalogues import LANGUAGES
    from retain.data.files import json_lines
    from retain.engine.generative import GenerativeLearner
    from retain.store import StoreError
    from retain.translation import TranslationStore, translate

    try:
        saved = (Path(args.store) / "learner.json").is_file()
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
        if (Path(args.store) / "learner.json").is_file():
            learner = GenerativeLearner.load(args.store)
        else:
            learner = TranslationStore(args.store).store.load(args.version)
        for lang in dict.fromkeys(r.get("lang", args.lang) for r in rows):
            mine = [r for r in rows if r.get("lang", args.lang) == lang]
            direction = learner.directions.get(lang)  # a language it never learned: no expert adapter
            for r, text in zip(mine, translate(learner, [r["source"] for r in mine], lang, direction,
                                               progress=not args.json and args.out is not None), strict=True):
                r["translation"] = text
    except (OSError, ValueError, ImportError, StoreError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        Path(args.out).write_text(lines)
        print(f"{len(rows)} translations in {args.out}")
    else:
        print(lines, end="")
    return 0


def _translation_loop(args: argparse.Namespace) -> int:
    """init, update, versions, rollback and predict on a store of a translation model."""
    from sqlalchemy.exc import SQLAlchemyError

    from retain.config import ConfigError
    from retain.data.files import FileError
    from retain.loop import as_json
    from retain.store import StoreError
    from retain.translation import TranslationStore, load_translation_config

    try:
        if args.command == "init":
            cfg = load_translation_config(args.config)
            if len(cfg.methods) > 1:
                print(f"note: a store learns with one method, the first: {cfg.methods[0].label}", file=sys.stderr)
            _, result = TranslationStore.init(cfg, args.data, args.store, database=args.database,
                                              progress=not args.json)
        elif args.command == "update":
            result = TranslationStore(args.store).update(args.data, progress=not args.json)
        elif args.command == "predict":
            return _translate(args)
        else:
            raise StoreError(f"retain {args.command} works on classification stores; {args.store} holds a "
                             "translation model (versions, update, rollback and predict work on it)")
    except (StoreError, ConfigError, FileError, SQLAlchemyError, OSError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(as_json(result))
    else:
        scores = ", ".join(f"{k} {v:.1f}" for k, v in result["chrf"].items())
        print(f"version {result['version']}: {'promoted' if result['promoted'] else 'not promoted'} "
              f"({result['reason']}); {result['trained_pairs']} pairs trained, {result['held_out_pairs']} held out; "
              f"chrF++ {scores}")
    return 0


def _loop(args: argparse.Namespace) -> int:
    """init, update, versions, rollback and predict: the loop on a model store."""
    from sqlalchemy.exc import SQLAlchemyError

    from retain.loop import Project, as_json
    from retain.store import StoreError
    from retain.translation import TranslationStore

    if args.command == "predict" and (Path(args.store) / "learner.json").is_file():
        return _translate(args)
    translation = (_is_translation(args.config) if args.command == "init"
                   else TranslationStore.holds_translation(args.store))
    if translation and args.command not in ("versions", "rollback"):
        return _translation_loop(args)
    try:
        if args.command == "init":
            config = _config(args, loop=True)
            if config.scenario.dataset != "files":
                print(f"note: scenario {config.scenario.dataset} is not used: retain init and update read --data",
                      file=sys.stderr)
            if len(config.strategies) > 1:
                print(f"note: a store learns with one method, the first: {config.strategies[0].label}",
                      file=sys.stderr)
            project, result = Project.init(config, args.data, args.store, held_out=args.held_out,
                                           progress=not args.json, database=args.database)
        elif args.command == "update":
            result = Project(args.store, progress=not args.json).update(args.data)
        elif args.command == "versions":  # a translation store's versions read alike, scored by chrF++
            rows = (TranslationStore if translation else Project)(args.store).versions()
            table = _versions_table(rows)
            print(as_json(rows) if args.json else table.replace("accuracy", "chrF++") if translation else table)
            return 0
        elif args.command == "diff":
            rows = Project(args.store).diff(args.a, args.b)
            if args.json:
                print(as_json(rows))
            else:
                print(f"| held-out rows | version {args.a} % | version {args.b} % | change (points) |\n"
                      "| --- | --- | --- | --- |")
                for key, r in rows.items():
                    print(f"| {key} | {100 * r[str(args.a)]:.1f} | {100 * r[str(args.b)]:.1f} "
                          f"| {100 * r['change']:+.1f} |")
            return 0
        elif args.command == "rollback":
            version = (TranslationStore if translation else Project)(args.store).rollback(args.version)
            print(as_json({"promoted": version}) if args.json else f"version {version} is promoted")
            return 0
        elif args.command == "evaluate":
            report = Project(args.store, progress=not args.json).evaluate(args.data, args.version)
            if args.json:
                print(as_json(report))
            else:
                print(f"version {report['version']}: accuracy {100 * report['accuracy']:.1f}% on {report['rows']} "
                      f"rows of {args.data}")
                print("per class: " + ", ".join(f"{k} {100 * a:.1f}%" for k, a in report["per_class"].items()))
                if report["unknown_classes"]:
                    print(f"classes the version does not know: {', '.join(report['unknown_classes'])}")
            return 0
        else:
            return _predict(args, Project(args.store, progress=not (args.json or args.out is None)))
    except BrokenPipeError:
        raise
    except (*_user_errors(), StoreError, ValueError, OSError, SQLAlchemyError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
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
        print(" ".join(f"{k} {100 * a:.1f}%" for k, a in result.accuracy.items()))
    return 1 if result.version is None else 0  # 1: the gate refused the batch


def _predict(args: argparse.Namespace, project) -> int:
    """``retain predict``: rows as CSV on the screen, or JSON, or a CSV / JSON Lines file."""
    from retain.loop import as_json

    if args.out and Path(args.out).suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"--out {args.out}: predictions are written as .csv or .jsonl")
    predictions = project.predict(args.data, top_k=args.top_k, version=args.version)
    k = len(predictions[0].top) if predictions else 1  # top_k, or every class when there are fewer
    records = [{"row": p.row, "label": p.label, "probability": p.top[0][1],
                "top": [{"label": n, "probability": v} for n, v in p.top]} for p in predictions]
    if args.json and not args.out:
        print(as_json(records))
        return 0
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
    return 0


def _versions_table(rows: list[dict]) -> str:
    lines = ["| version | parent | promoted | decision | data | held-out accuracy by batch | reason |",
             "|" + " --- |" * 7]
    for r in rows:
        acc = ", ".join(f"{k.removeprefix('batch-')}: {100 * a:.1f}" for k, a in r["accuracy"].items())
        lines.append(f"| {r['version']} | {r['parent'] or ''} | {'yes' if r['promoted'] else ''} | {r['decision']} "
                     f"| {', '.join(r['data'])} | {acc} | {r['reason']} |")
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    """``retain serve``: the store behind the HTTP API (see ``retain.service``)."""
    import yaml
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from retain.config import ServiceConfig, format_errors
    from retain.loop import Project
    from retain.store import StoreError

    try:
        settings = Project(args.store).config.service
        if args.config:
            raw = yaml.safe_load(Path(args.config).read_text()) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"{args.config} must hold a mapping (a service: section, or its settings)")
            # a run config's service: section, or the file is the section itself
            section = raw.get("service") or ({} if "strategies" in raw else raw)
            settings = ServiceConfig.model_validate(settings.model_dump() | section)
    except ValidationError as err:
        print(f"retain: invalid service settings in {args.config}:\n{format_errors(err)}", file=sys.stderr)
        return 2
    except (StoreError, OSError, ValueError, yaml.YAMLError, SQLAlchemyError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    import uvicorn

    if args.workers > 1:  # worker processes build the app themselves; metrics are summed across them
        import tempfile

        os.environ["RETAIN_SERVE_STORE"] = str(args.store)
        os.environ["RETAIN_SERVE_SETTINGS"] = settings.model_dump_json()
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="retain-metrics-"))
        uvicorn.run("retain.service.app:app_from_environment", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level)
        return 0
    from retain.service.app import create_app

    try:
        app = create_app(args.store, settings, updater=not args.no_updater)
    except (StoreError, OSError, ValueError, SQLAlchemyError) as err:
        print(f"retain: {err}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
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
    run.add_argument("--resume", action="store_true",
                     help="finish an interrupted run (--out, or the newest of its name): methods done are kept")
    run.add_argument("--nproc", type=_positive, default=1, help="train on N processes (torchrun, DDP: gloo on "
                     "the CPU, NCCL on GPUs), each a share of every global batch")
    run.set_defaults(func=_run)
    select = sub.add_parser("select", help="model selection: compare backbones and adaptation modes on a config")
    select.add_argument("config", help="YAML run config (its scenario and strategies are used)")
    select.add_argument("--backbone", action="append", help="backbone to compare (repeat; default: the config's)")
    select.add_argument("--adaptation", default="frozen,lora,full", help="comma-separated: frozen, lora, full")
    select.add_argument("--seeds", type=int, nargs="+", help="override the config's seeds")
    select.add_argument("--out", help="write the rows as JSON to this file")
    select.add_argument("--quiet", action="store_true", help="no progress bars")
    select.set_defaults(func=_select)
    from retain.data.datasets import DATASETS
    from retain.data.export import FORMATS

    exporting = sub.add_parser("export", help="write a built-in data set as files (tables, images, WAV, npz), "
                               "one folder per batch, as a user would bring them")
    exporting.add_argument("dataset", choices=[*DATASETS, "translations"],
                           help="a built-in data set, or translations: Debian's catalogues as a parallel corpus")
    exporting.add_argument("folder", help="a new or empty folder")
    exporting.add_argument("--format", required=True, choices=FORMATS)
    exporting.add_argument("--kind", default="class_incremental", choices=["class_incremental", "task_incremental"])
    exporting.add_argument("--experiences", type=int, default=5, help="batches to cut the stream into")
    exporting.add_argument("--test-fraction", type=_fraction, default=0.3, help="share of each class kept for test")
    exporting.add_argument("--split-seed", type=int, default=0)
    exporting.add_argument("--max-train-per-class", type=_positive, help="keep at most this many (default: all; "
                           "translations: pairs per direction, the only options they take with --format)")
    exporting.add_argument("--max-test-per-class", type=_positive, help="keep at most this many (default: all)")
    exporting.set_defaults(func=_export)
    init = sub.add_parser("init", help="a new model store: version 1 trained on a first batch of your data")
    init.add_argument("config", help="YAML config: model, training, strategies (the first is used), promotion")
    init.add_argument("--data", required=True, help="a table, .npz, or folder of class folders (a translation "
                      "config: JSON Lines of source, target and lang, as retain export translations writes)")
    init.add_argument("--store", required=True, help="a new or empty folder")
    init.add_argument("--held-out", type=float, default=0.2, help="fraction of each batch kept to judge versions")
    init.add_argument("--database", help="SQLAlchemy URL of an empty database for the store's records "
                      "(postgresql://user@host/db; default: SQLite in the store's folder)")
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=_loop, seeds=None)
    update = sub.add_parser("update", help="learn a new batch: a candidate, judged on every batch, promoted or kept")
    update.add_argument("store")
    update.add_argument("--data", required=True)
    update.add_argument("--json", action="store_true")
    update.set_defaults(func=_loop)
    versions = sub.add_parser("versions", help="the store's versions: parent, data, accuracy, decision")
    versions.add_argument("store")
    versions.add_argument("--json", action="store_true")
    versions.set_defaults(func=_loop)
    rollback = sub.add_parser("rollback", help="serve another version: by default the promoted one's parent; "
                              "any version may be named, a kept candidate too")
    rollback.add_argument("store")
    rollback.add_argument("version", type=int, nargs="?")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=_loop)
    diff = sub.add_parser("diff", help="accuracy change between two versions, per batch and per class")
    diff.add_argument("store")
    diff.add_argument("a", type=int)
    diff.add_argument("b", type=int)
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=_loop)
    predict = sub.add_parser("predict", help="labels a version predicts for a file or folder, labelled or not, "
                             "with top-k probabilities")
    predict.add_argument("store")
    predict.add_argument("--data", required=True, help="(a saved translation model: JSON Lines of {source, lang}) "
                         "a table (no label column needed), .npz, or a folder or "
                         "file of images or WAV clips")
    predict.add_argument("--top-k", type=int, default=1, help="labels per row with their probabilities")
    predict.add_argument("--version", type=int, help="default: the promoted version")
    predict.add_argument("--out", help="write the predictions to this .csv or .jsonl file")
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--lang", help="a saved translation model: the target language of rows that name none")
    predict.set_defaults(func=_loop)
    evaluate = sub.add_parser("evaluate", help="accuracy of a version on a labelled file or folder, per class")
    evaluate.add_argument("store")
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--version", type=int, help="default: the promoted version")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=_loop)
    serve = sub.add_parser("serve", help="serve a store over HTTP: predict, feedback, automatic updates, "
                           "metrics and a live dashboard")
    serve.add_argument("store")
    serve.add_argument("--config", help="YAML with a service: section (token, limits, update triggers)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (one of them holds the updater)")
    serve.add_argument("--no-updater", action="store_true", help="predict and take feedback only; another "
                       "process updates")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(func=_serve)
    tuning = sub.add_parser("tune", help="tune each method's knobs (Optuna) on validation slices, then compare "
                            "default and tuned configs on the test sets")
    tuning.add_argument("source", help="YAML run config (its tune: section and strategies' search:), or a model "
                        "store (tunes its config on the batches it holds)")
    tuning.add_argument("--out", help="report folder; also holds the study (default: <output>/<name>-tune); "
                        "a study found there resumes")
    tuning.add_argument("--workers", type=_positive, default=1, help="processes sharing the study")
    tuning.add_argument("--storage", help="study database: a SQLite file, or postgresql://user@host/db for "
                        "workers on several hosts (default: <out>/study.db)")
    tuning.add_argument("--trials", type=_positive, help="override tune.trials")
    tuning.add_argument("--no-final", action="store_true", help="skip the test-set comparison of the best configs")
    tuning.add_argument("--apply", action="store_true", help="a store: make the tuned knobs its own (its next "
                        "updates train with them) if they beat its current ones on the test rows")
    tuning.add_argument("--quiet", action="store_true")
    tuning.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    tuning.add_argument("--threads", type=_positive, default=1, help=argparse.SUPPRESS)
    tuning.set_defaults(func=_tune)
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
