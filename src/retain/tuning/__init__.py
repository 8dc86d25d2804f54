"""Tuning the stability-plasticity knobs with Optuna (``retain tune``).

:func:`tune` runs one study per method of a config (or of a model store's config, on the data
the store holds), with one or more worker processes sharing an Optuna storage, then writes the
report: the best configs as YAML, the trials, Optuna's plots and the test-set comparison of the
default and tuned configurations (``retain.tuning.report``). What a trial may read and how
studies are shared: ``retain.tuning.study``. A store whose model writes its answers (translation,
transcription) is tuned on the rows it holds by ``retain.tuning.answers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retain.tuning import _extra  # noqa: F401  (first: names the extra when Optuna is missing)
from retain.tuning.report import write_tuning_report
from retain.tuning.space import Knob, configured, knobs
from retain.tuning.stored import read_source
from retain.tuning.study import Source, TuneError, optimize, run_workers, storage_url, validation_stream
from retain.util import auto_threads


def tune(source: Source, out: str | Path, *, workers: int = 1, storage: str | None = None, progress: bool = True,
         final: bool = True) -> list[dict[str, Any]]:
    """Tune every method of ``source`` (:func:`read_source`: a config file or a model store) with
    ``workers`` processes sharing one study per method in ``storage`` (default: SQLite
    ``out/study.db``; a study found there resumes), then write the report to ``out``. ``final``:
    also train the default and best configs with ``tune.final_seeds`` and score them on the test
    sets. Returns the report's rows.

    Args:
        source: what to tune (:func:`read_source`).
        out: the report's folder (made when missing).
        workers: how many processes run trials.
        storage: the study database: a URL, a file path, or None (``out/study.db``).
        progress: show progress bars.
        final: also score the default and best configs on the test sets.

    Returns:
        One row per method, as :func:`write_tuning_report` writes them.

    Raises:
        TuneError: ``workers`` below 1, or a study that cannot run as asked.
    """
    if workers < 1:
        raise TuneError(f"workers must be 1 or more, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out)
    threads = torch.get_num_threads()
    setting = source.cfg.training.threads
    torch.set_num_threads(auto_threads() if setting == "auto" else setting)
    try:
        run_workers(source, url, out, workers, progress)
        return write_tuning_report(source, url, out, progress=progress, final=final)
    finally:
        torch.set_num_threads(threads)


__all__ = ["Knob", "Source", "TuneError", "configured", "knobs", "optimize", "read_source", "storage_url", "tune",
           "validation_stream", "write_tuning_report"]
