"""Every committed benchmark still runs: each script's ``--smoke`` setting (its own code on a sliver of the
data) exits 0 and writes the fields its full run writes (``benchmarks/results/*.json``).

A renamed method or field then fails here, not in the hands of the next person to run the benchmark.
The whole file is marked ``bench``: ``pytest -m "not bench"`` leaves it out; ``make test`` runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
# script -> what it writes beside --out: a Markdown report (--results), or a folder instead of a JSON file.
# The slowest first (about 45, 45, 30, 30, 20 s...): run two at a time, they then end together.
SCRIPTS = {
    "service": None, "golden": "folder", "llm_mt": "results", "backbones": "results", "cli_latency": None,
    "lifecycle": None, "distributed": None, "tune": None, "online": "results", "class_il": "results",
    "peer_avalanche": None, "online_throughput": None, "pending": None, "real_keywords": None,
    "speech": "results", "speech_vocabulary": None, "detection": "results", "seq_mnist": "results",
    "frontier": "results", "tricks": "results",
}
TIMEOUT = 600  # a hung server or worker fails the test instead of the suite
# Avalanche lives in its own environment (several GB), which a smoke run never makes: then its row says so.
PEER_FIELDS = {"peer_acc", "peer_train_seconds", "peer_train_seconds_repeats"}
# What golden.py writes, one item per step; items 01-06 record calls that must succeed, 07 calls that must fail.
GOLDEN_ITEMS = ["01_help", "02_strategies.json", "03_digits_run", "04_classifier_store", "05_translation",
                "06_openapi.json", "07_errors"]


def shape(data) -> dict[str, set[str]]:
    """The fields a results file holds, by where: rows (lists of objects) grouped by their ``row`` kind,
    keeping the fields every row of a kind has; an object's keys; and the keys that every entry of an
    object of named entries shares (``streams/*``)."""
    out: dict[str, set[str]] = {}

    def rows(path: str, items: list) -> None:
        for r in items:
            kind = f"{path}[{r.get('row', '')}]"
            out[kind] = out[kind] & set(r) if kind in out else set(r)

    if isinstance(data, list):
        rows("", data)
        return out
    out[""] = set(data)
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            rows(key, value)
        elif isinstance(value, dict) and value and all(isinstance(e, dict) for e in value.values()):
            out[f"{key}/*"] = set.intersection(*(set(e) for e in value.values()))
    return out


class SmokeRuns:
    """The scripts' smoke runs, in the order of the tests, two at a time: a test waits for its own script
    while the next ones keep both cores busy. Each script is single-threaded (OMP_NUM_THREADS=1) and the
    rest of the suite uses one core; one after another they took 4.5 minutes."""

    def __init__(self, order: list[str], folder: Path) -> None:
        self.pending, self.folder, self.running = list(order), folder, {}

    def start(self, name: str) -> None:
        script, work = BENCHMARKS / f"{name}.py", self.folder / name
        work.mkdir()
        out = work / (name if SCRIPTS[name] == "folder" else f"{name}.json")
        argv = [sys.executable, str(script), "--smoke", "--out", str(out)]
        if SCRIPTS[name] == "results":
            argv += ["--results", str(work / f"{name}.md")]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        process = None
        if script.is_file():
            with (work / "log.txt").open("w") as log:
                process = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = (process, out, work / "log.txt", time.monotonic())

    def fill(self) -> None:
        """Start the next scripts while fewer than two run."""
        while self.pending and sum(p is not None and p.poll() is None for p, *_ in self.running.values()) < 2:
            self.start(self.pending.pop(0))

    def result(self, name: str) -> Path:
        """Wait for ``name``'s run; the path it wrote its results to."""
        if name in self.pending and name not in self.running:  # a test run out of the collected order
            self.pending.remove(name)
            self.start(name)
        self.fill()
        process, out, log, started = self.running[name]
        assert process is not None, f"benchmarks/{name}.py is missing"
        while process.poll() is None:
            if time.monotonic() - started > TIMEOUT:
                process.kill()
                process.wait()
                pytest.fail(f"{name}.py --smoke ran over {TIMEOUT} s:\n{log.read_text()[-4000:]}")
            self.fill()
            time.sleep(0.2)
        self.fill()
        assert process.returncode == 0, f"{name}.py --smoke exited {process.returncode}:\n{log.read_text()[-4000:]}"
        return out

    def stop(self) -> None:
        for process, *_ in self.running.values():
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def _script(item: pytest.Item) -> str | None:
    """The benchmark script a collected test of this file runs, if any."""
    if item.path != Path(__file__):
        return None
    if item.originalname == "test_golden_smoke_records_every_step":
        return "golden"
    return item.callspec.params.get("name") if hasattr(item, "callspec") else None


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    pool = SmokeRuns([n for n in map(_script, request.session.items) if n], tmp_path_factory.mktemp("benchmarks"))
    yield pool
    pool.stop()


def test_every_benchmark_has_a_smoke_test():
    assert sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in SCRIPTS) == []


def test_shape_groups_rows_by_kind():
    data = {"rows": [{"row": "a", "x": 1, "y": 2}, {"row": "a", "x": 3}, {"row": "b", "z": 0}],
            "streams": {"s1": {"cache": 1, "cost": 2}, "s2": {"cost": 3}}, "minutes": 1.0}
    assert shape(data) == {"": {"rows", "streams", "minutes"}, "rows[a]": {"row", "x"}, "rows[b]": {"row", "z"},
                           "streams/*": {"cost"}}
    assert shape([{"acc": 1.0}, {"acc": 0.5, "plain_acc": 0.4}]) == {"[]": {"acc"}}


def test_golden_smoke_records_every_step(runs):
    out = runs.result("golden")
    assert sorted(p.name for p in out.iterdir()) == GOLDEN_ITEMS
    records = {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))}
    assert all(records.values()), [k for k, v in records.items() if not v]
    exits = {k: v["exit"] for k, v in records.items() if isinstance(v, dict) and "exit" in v}
    assert {k: e for k, e in exits.items() if not k.startswith("07_") and e != 0} == {}
    assert {k: e for k, e in exits.items() if k.startswith("07_") and e in (0, "timeout")} == {}
    assert (out / "01_help" / "retain.txt").read_text().startswith("usage: retain")


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n != "golden"])
def test_smoke_run_writes_the_full_runs_fields(name, runs):
    out = runs.result(name)
    data = json.loads(out.read_text())
    assert data, f"{name}.py --smoke wrote an empty {out.name}"
    got = shape(data)
    assert all(got.values()), f"{name}.py --smoke wrote rows without fields: {got}"
    committed = RESULTS / f"{name}.json"
    if not committed.is_file():  # a script whose full run has no committed results yet: its rows are checked above
        return
    expected = shape(json.loads(committed.read_text()))
    if name == "peer_avalanche" and all("peer_skipped" in r for r in data):
        assert not (ROOT / ".venv-avalanche" / ".ready").is_file(), "Avalanche is installed but was skipped"
        expected = {kind: fields - PEER_FIELDS for kind, fields in expected.items()}
    missing = {kind: sorted(fields - got.get(kind, set())) for kind, fields in expected.items()
               if fields - got.get(kind, set())}
    assert missing == {}, f"{name}.py --smoke lacks fields of {committed.relative_to(ROOT)} (kind: fields)"
