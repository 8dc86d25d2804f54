"""``retain run`` (on one process, on N under torchrun, or a translation stream) and ``retain select``."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from retain.cli.configs import config_task, run_config
from retain.cli.errors import CommandError, RunFolderError, reported, user_errors

if TYPE_CHECKING:
    from retain.config import RunConfig
    from retain.metrics import ExperimentResult, MethodResult
    from retain.strategies.contract import Ranks
    from retain.tasks.translation import TranslationConfig


def _run_folder(cfg: RunConfig | TranslationConfig, out: str | None, resume: bool) -> Path:
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
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"output {root}: cannot make the folder runs are written to ({err.strerror}); "
                                 "set output: to a folder you can write") from None
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


def _check_device(device: str) -> None:
    """Refuse, before any training, a ``training.device`` this machine does not have."""
    from retain.engine.learner import resolve_device

    try:
        resolve_device(device)
    except ValueError as err:
        raise CommandError(f"training.device: {err}; set device: auto (a GPU when there is one) or cpu") from None


def _writable(path: str, flag: str) -> None:
    """Refuse, before any training, a file the results could not be written to."""
    target = Path(path)
    existed = target.exists()
    try:
        with open(target, "a"):
            pass
    except OSError as err:
        raise CommandError(f"{flag} {path}: cannot be written ({err.strerror})") from None
    if not existed:
        target.unlink()


def _finished_methods(cfg: RunConfig, folder: Path) -> dict[str, MethodResult]:
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


def _check_ranks(cfg: RunConfig, world: int) -> None:
    """Refuse, before any training, what cannot run across ``world`` ranks."""
    from retain.engine import distributed

    if world == 1:
        return
    for i, method in enumerate(cfg.strategies):
        problem = distributed.problem(method.build(cfg.model.head), list[str](cfg.mode))
        if problem:
            raise RunFolderError(f"--nproc: strategies.{i}: {problem}")
    if cfg.training.batch_size < world:
        raise RunFolderError(f"--nproc: training.batch_size {cfg.training.batch_size} is smaller than the "
                             f"{world} ranks")


def _start(cfg: RunConfig, args: argparse.Namespace, ranks: Ranks) -> tuple[Path | None, dict[str, MethodResult]]:
    """The run folder and the methods already done. Rank 0 decides; the others learn its decision (or its
    error) before any collective step."""
    from retain.engine import distributed

    problem, out, done = None, None, {}
    if ranks.rank == 0:
        try:
            out = _run_folder(cfg, args.out, args.resume)
            _check_ranks(cfg, ranks.world)
            if ranks.world > 1:
                batch = cfg.training.batch_size
                print(f"{ranks.world} ranks ({distributed.backend()}): global batch {batch} "
                      f"({batch // ranks.world}{'' if batch % ranks.world == 0 else f'-{-(-batch // ranks.world)}'}"
                      f" rows a rank), lr {cfg.training.lr}", file=sys.stderr)
            done = _finished_methods(cfg, out) if args.resume else {}
        except user_errors() as err:
            problem = str(err)
    problem, finished = cast(tuple[str | None, list[str]], distributed.share((problem, sorted(done))))
    if problem:
        raise RunFolderError(problem)
    # The other ranks only need the names, to skip those methods too; their results are not kept.
    return out, done if ranks.rank == 0 else cast("dict[str, MethodResult]", dict.fromkeys(finished))


def run(args: argparse.Namespace) -> int:
    """``retain run``: every method of the config on its stream, results and report in the run folder."""
    from retain.engine import distributed
    from retain.experiment import run_experiment
    from retain.monitor import comparison_table, write_report, write_results

    task = config_task(args.config)
    if task == "translation":
        return _run_translation(args)
    if task != "classification":
        print(f"retain run: {args.config} is a {task} config; retain run compares classification and translation "
              f"methods. A {task} store learns through retain init and update (benchmarks/speech.py and "
              "benchmarks/detection.py compare speech and detection methods)", file=sys.stderr)
        return 2
    if args.nproc > 1 and not distributed.launched():
        return _launch_ranks(args)
    with reported():
        cfg = run_config(args)
        _check_device(cfg.training.device)
        ranks = distributed.start(cfg.training.device)
    main_rank = ranks.rank == 0
    try:
        with reported():
            out, done = _start(cfg, args, ranks)
            if done and main_rank:
                print(f"resuming {out}: {', '.join(done)} already done", file=sys.stderr)

            def written(results_so_far: ExperimentResult) -> None:
                if out is not None:  # rank 0's folder: the other ranks write nothing
                    write_results(results_so_far, out)

            results = run_experiment(cfg, progress=not args.quiet and main_rank, done=done, on_method=written)
    finally:
        distributed.stop()
    if not main_rank:
        return 0
    assert out is not None  # rank 0 made the run folder
    write_report(results, out)
    if not args.quiet:
        print(comparison_table(results))
    if results.stream.read_as:
        print(f"tables read as: {results.stream.read_as} (name them under scenario.files)")
    print(f"report: {out / 'report.md'}")
    return 0


def _run_translation(args: argparse.Namespace) -> int:
    """``retain run`` on a ``task: translation`` config: the continual translation stream."""
    from retain.data.catalogues import CatalogueError
    from retain.translation import load_translation_config, run_translation, translation_table, write_translation_report

    with reported(CatalogueError, FileNotFoundError):
        for flag, given in (("--nproc", args.nproc > 1), ("--resume", args.resume), ("--seeds", args.seeds)):
            if given:
                raise RunFolderError(f"{flag}: a translation run takes one process and the seed: in its config")
        cfg = load_translation_config(args.config)
        out = _run_folder(cfg, args.out, False)

        def written(results_so_far: ExperimentResult, extras_so_far: dict[str, Any]) -> None:
            write_translation_report(results_so_far, extras_so_far, out)

        results, extras = run_translation(cfg, progress=not args.quiet, out=out, on_method=written)
    write_translation_report(results, extras, out)
    if not args.quiet:
        print(translation_table(results, extras))
    print(f"report: {out / 'report.md'}")
    return 0


def _launch_ranks(args: argparse.Namespace) -> int:
    """``retain run --nproc N``: the same command under torchrun, N processes on this machine."""
    import subprocess

    with reported():
        cfg = run_config(args)
        _check_ranks(cfg, args.nproc)
        out = _run_folder(cfg, args.out, args.resume)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "retain", "run", args.config, "--out", str(out)]
    command += (["--seeds", *map(str, args.seeds)] if args.seeds else []) + (["--quiet"] if args.quiet else []) \
        + (["--resume"] if args.resume else [])
    env = os.environ | {"OMP_NUM_THREADS": "1"}  # each rank sets its share of the cores itself
    return subprocess.call(command, env=env)


def select(args: argparse.Namespace) -> int:
    """``retain select``: the config's methods with each backbone and adaptation, as a table."""
    from retain.experiment import compare_backbones
    from retain.monitor.report import percent

    with reported(invalid="invalid choice"):
        cfg = run_config(args)
        backbones = args.backbone or [cfg.model.backbone]
        choices = [(b, a) for b in backbones for a in args.adaptation.split(",")]
        _check_variants(cfg, choices)
        _check_device(cfg.training.device)
        if args.out:
            _writable(args.out, "--out")
        rows = compare_backbones(cfg, choices, progress=not args.quiet)
    header = ("backbone", "adaptation", "method", "ACC %", "forgetting %", "update s", "features s",
              "trainable params", "peak MB")
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for r in rows:
        print(f"| {r['backbone']} | {r['adaptation']} | {r['strategy']} "
              f"| {100 * r['acc']:.1f} ± {100 * r['acc_std']:.1f} "
              f"| {percent(r['forgetting'])} | {r['update_seconds']:.2f} | {r['feature_seconds']:.1f} "
              f"| {r['trainable_parameters']:,.0f} | {r['peak_mb']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
        print(f"rows: {args.out}")
    return 0


def _check_variants(cfg: RunConfig, choices: list[tuple[str | None, str]]) -> None:
    """Refuse, before any training, a backbone and adaptation ``retain select`` could not run (each variant is
    the config with that model, as :func:`retain.experiment.compare_backbones` builds it)."""
    from pydantic import ValidationError

    from retain.config import RunConfig, format_errors

    for backbone, adaptation in choices:
        update: dict[str, Any] = {"backbone": backbone, "adaptation": adaptation}
        if backbone is None and not cfg.model.hidden:
            update["hidden"] = [256, 256]
        try:
            RunConfig.model_validate(cfg.model_dump() | {"model": cfg.model.model_dump() | update})
        except ValidationError as err:
            raise CommandError(f"--backbone {backbone or 'none (raw inputs)'} --adaptation {adaptation}: "
                               f"{format_errors(err).strip()}") from None
