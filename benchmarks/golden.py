"""Golden outputs of retain's command line and service, so a refactor can be shown to change no behaviour.

Every ``retain`` call runs as ``python -m retain`` in a subprocess, with the ``PYTHONPATH`` of the
environment, so the same script judges any checkout. What it writes under ``--out`` is text and
JSON with sorted keys, one file per item, with timings and memory figures dropped and the temporary
folder written ``<tmp>``: two runs of one commit give identical folders, and ``diff -r`` between
two commits shows only what really changed.

- ``01_help``: ``retain --help``, ``--version`` and every subcommand's ``--help`` (found in the usage line);
- ``02_strategies``: ``retain strategies --json``;
- ``03_digits_run``: ``retain run examples/digits_quick.yaml``: its config and results.json (accuracy
  matrices bit for bit);
- ``04_classifier_store``: digits exported as CSV batches; init, update, versions, diff, predict
  (also of version 1), evaluate; every exported file's and stored version's SHA-256 and manifest;
- ``05_translation``: a tiny random decoder on two directions with ``retain run`` (chrF++ matrices,
  saved models' hashes), then a translation store from ``retain export translations``;
- ``06_openapi``: the OpenAPI document of the app ``retain serve`` builds on the digits store;
- ``07_errors``: exit code, stdout and stderr of 25 bad invocations (progress bars as one line,
  a traceback as its last line);
- ``08_old_stores`` (with ``--keep-stores`` or ``--old-stores``): stores made by one commit opened,
  updated with one more batch and queried by the commit under test.

``--smoke`` (tests/test_benchmarks.py) runs every step but, of the store reads and the bad invocations,
only the first of each list: a check that this script still runs, not a baseline to compare.

Compare two commits (the old one in a worktree; a run takes 2.5 CPU-minutes, 3.5 to 4.5 minutes on 2 shared
cores)::

    git worktree add /tmp/golden-base OLD_COMMIT
    PYTHONPATH=/tmp/golden-base/src python benchmarks/golden.py --out /tmp/golden/base \\
        --keep-stores /tmp/golden/stores
    PYTHONPATH=src python benchmarks/golden.py --out /tmp/golden/new --old-stores /tmp/golden/stores
    diff -r /tmp/golden/base /tmp/golden/new

``--keep-stores`` copies the stores this run made into a folder, then opens its own copies as
``--old-stores`` would, so the baseline holds the old commit's answers to the same calls. Run it
from a folder where the checkout's ``src`` is not first on the path (it prints which ``retain``
it judges).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP_PREFIX = "retain-golden-"
# Any folder this script made, also one an earlier run recorded in a store it kept.
TMP_PATTERN = re.compile(re.escape(str(Path(tempfile.gettempdir()).resolve())) + "/" + TMP_PREFIX + r"[A-Za-z0-9_]+")
# Keys whose values depend on the machine's speed or memory, not on behaviour.
TIMING_KEY = re.compile(r"seconds|per_second|minutes|_mb($|_)|elapsed|duration|timestamp|created|(^|_)time($|_)")
CALL_TIMEOUT = 180
SMOKE_CALLS = 1  # --smoke: of each list of calls that no later call needs, this many
# A progress bar's line: its rate and times vary from run to run, and how often it redraws.
PROGRESS = re.compile(r"\|\s*\d+/\d+ \[|\d+%\|")

LOOP_CONFIG = """\
model: {hidden: [64]}
training: {lr: 0.05, epochs: 5}
strategies: [{name: replay, memory_size: 200}]
"""
# lr 0.01 and 16 pairs: the smallest run whose chrF++ matrices are not all zero.
TRANSLATION_RUN = """\
task: translation
name: tiny-mt
model: {name: tiny, adaptation: lora}
corpus: {languages: [de, fr], n_train: 16, n_test: 3}
training: {lr: 0.01, epochs: 1, batch_size: 4, max_tokens: 200, threads: 1}
generation: {max_new_tokens: 8, perplexity_texts: 0}
methods:
  - label: finetune
  - label: replay
    compose: [{name: replay, memory_size: 4, policy: reservoir}]
  - label: experts
    adaptation: experts
"""
TRANSLATION_STORE = """\
task: translation
name: tiny-store
model: {name: tiny, adaptation: lora}
training: {lr: 0.01, epochs: 1, batch_size: 4, max_tokens: 200, threads: 1}
generation: {max_new_tokens: 8}
"""
SOURCES = '{"source": "File not found", "lang": "fr"}\n{"source": "Open", "lang": "de"}\n'
OPENAPI = """\
import json, sys
from retain.config import ServiceConfig
from retain.service.app import create_app
app = create_app(sys.argv[1], ServiceConfig(), token=None, updater=False)
print(json.dumps(app.openapi(), indent=1, sort_keys=True))
"""


def without_timings(value):
    """``value`` with every key that names a time, a speed or a memory size dropped, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING_KEY.search(str(k))}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def parsed(text: str):
    """Output as JSON when it is JSON (one document, or one per line), else as its lines."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    lines = text.splitlines()
    try:
        return [json.loads(line) for line in lines] if lines else []
    except ValueError:
        return lines


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


class Golden:
    """Runs ``retain`` calls in a temporary folder and writes their normalised outputs under ``out``."""

    def __init__(self, out: Path, tmp: Path, smoke: bool = False) -> None:
        self.out, self.tmp, self.smoke = out, tmp, smoke
        self.env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                 "PYTHONHASHSEED": "0", "COLUMNS": "100", "NO_COLOR": "1"}
        self.checkout = ""

    def calls(self, named: dict[str, list]) -> None:
        """``retain ARGV`` for each ``name: argv`` (in a smoke run, the first ``SMOKE_CALLS`` of them)."""
        for name, argv in list(named.items())[:SMOKE_CALLS if self.smoke else None]:
            self.retain(name, *argv)

    def normal(self, text: str) -> str:
        """``text`` with this run's temporary folder, earlier runs' and the checkout written as placeholders."""
        text = text.replace(str(self.tmp), "<tmp>")
        if self.checkout:
            text = text.replace(self.checkout, "<checkout>")
        return TMP_PATTERN.sub("<tmp>", text)

    def write(self, name: str, value) -> None:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, str):
            path.write_text(self.normal(value))
        else:
            path.write_text(self.normal(json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False)) + "\n")

    def python(self, *argv: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, *argv], cwd=self.tmp, env=self.env, capture_output=True,
                                  text=True, timeout=CALL_TIMEOUT)
        except subprocess.TimeoutExpired as err:
            return subprocess.CompletedProcess(err.cmd, "timeout", err.stdout or "", err.stderr or "")

    def retain(self, name: str | None, *argv: str | Path) -> subprocess.CompletedProcess:
        """``retain ARGV``, recorded as ``name`` (argv, exit code, stdout, stderr) unless ``name`` is None."""
        argv = [str(a) for a in argv]
        done = self.python("-m", "retain", *argv)
        if name is not None:
            self.write(name, {"argv": argv, "exit": done.returncode, "stdout": parsed(done.stdout),
                              "stderr": self.stderr(done.stderr)})
        return done

    def stderr(self, text: str) -> list[str]:
        """stderr as lines, progress bars as one ``<progress>`` line; a traceback is cut to its last line,
        so moved code does not read as a change."""
        lines = text.replace("\r", "\n").splitlines()
        if any(line.startswith("Traceback (most recent call last)") for line in lines):
            return ["<traceback>", lines[-1]]
        if not any(PROGRESS.search(line) for line in lines):
            return lines
        # Bars also leave blank lines and cursor moves behind, as many as they redrew.
        return [line for line in lines if line.strip() and "\x1b" not in line and not PROGRESS.search(line)] + [
            "<progress>"]

    def locate(self) -> str:
        """The ``retain`` package this run judges; its checkout's path becomes ``<checkout>``."""
        done = self.python("-c", "import retain; print(retain.__file__)")
        if done.returncode != 0:
            sys.exit(f"golden: cannot import retain: {done.stderr.strip()}")
        package = Path(done.stdout.strip()).parent
        self.checkout = str(package.parent.parent)
        return str(package)

    def helps(self) -> None:
        top = self.retain(None, "--help")
        self.write("01_help/retain.txt", top.stdout)
        self.write("01_help/version.txt", self.retain(None, "--version").stdout)
        commands = re.search(r"\{([a-z_,-]+)\}", top.stdout)
        names = commands.group(1).split(",") if commands else []
        for command in names:
            done = self.retain(None, command, "--help")
            self.write(f"01_help/{command}.txt", done.stdout + (f"exit {done.returncode}\n{done.stderr}"
                                                                 if done.returncode else ""))

    def strategies(self) -> None:
        done = self.retain(None, "strategies", "--json")
        self.write("02_strategies.json", {"exit": done.returncode, "stdout": parsed(done.stdout),
                                          "stderr": self.stderr(done.stderr)})

    def digits_run(self) -> None:
        example = Path(self.checkout) / "examples" / "digits_quick.yaml"
        if not example.is_file():
            example = ROOT / "examples" / "digits_quick.yaml"
        config = self.tmp / "digits_quick.yaml"
        shutil.copy(example, config)
        self.write("03_digits_run/config.yaml", config.read_text())
        self.run_report("03_digits_run", config, self.tmp / "digits-run")

    def run_report(self, item: str, config: Path, folder: Path) -> None:
        """``retain run`` of ``config`` into ``folder``: the call, results without timings, saved models' hashes."""
        self.retain(f"{item}/run.json", "run", config, "--out", folder, "--quiet")
        for name in ("results.json", "translation.json"):
            if (folder / name).is_file():
                self.write(f"{item}/{name}", without_timings(json.loads((folder / name).read_text())))
        self.write(f"{item}/files.json", {"files": sorted(p.relative_to(folder).as_posix() for p in
                                                          folder.rglob("*") if p.is_file()),
                                          "models": file_hashes(folder / "models") if (folder / "models").is_dir()
                                          else {}})

    def store_files(self, name: str, store: Path) -> None:
        """Each version's files and manifest, and the store's kept batches, by SHA-256 (store.db holds times)."""
        versions = {}
        folder = store / "versions"
        made = sorted(folder.iterdir(), key=lambda p: int(p.name)) if folder.is_dir() else []
        for version in made:  # none when the store was refused: the diff shows that
            manifest = version / "manifest.json"
            versions[version.name] = {"sha256": file_hashes(version),
                                      "manifest": json.loads(manifest.read_text()) if manifest.is_file() else None}
        data = file_hashes(store / "data") if (store / "data").is_dir() else {}
        self.write(name, {"versions": versions, "data": data})

    def classifier_store(self) -> Path:
        item, csv, store = "04_classifier_store", self.tmp / "digits-csv", self.tmp / "digits-store"
        self.retain(f"{item}/01_export.json", "export", "digits", csv, "--format", "csv")
        self.write(f"{item}/02_exported_files.json", file_hashes(csv))
        config = self.tmp / "loop.yaml"
        config.write_text(LOOP_CONFIG)
        self.retain(f"{item}/03_init.json", "init", config, "--data", csv / "00" / "train.csv", "--store", store,
                    "--json")
        self.retain(f"{item}/04_update.json", "update", store, "--data", csv / "01" / "train.csv", "--json")
        self.calls({
            f"{item}/05_versions.json": ["versions", store, "--json"],
            f"{item}/06_diff.json": ["diff", store, "1", "2", "--json"],
            f"{item}/07_predict.json": ["predict", store, "--data", csv / "01" / "test.csv", "--top-k", "2", "--json"],
            f"{item}/08_predict_v1.json": ["predict", store, "--data", csv / "01" / "test.csv", "--version", "1",
                                           "--json"],
            f"{item}/09_evaluate.json": ["evaluate", store, "--data", csv / "01" / "test.csv", "--json"],
        })
        self.store_files(f"{item}/10_store_files.json", store)
        return store

    def translation(self) -> Path:
        item = "05_translation"
        config = self.tmp / "tiny-mt.yaml"
        config.write_text(TRANSLATION_RUN)
        self.run_report(f"{item}/run", config, self.tmp / "tiny-mt-run")
        corpus, store = self.tmp / "corpus", self.tmp / "translation-store"
        # 40 pairs a direction, half held out: the 20 a direction's batch needs (min_held_out)
        self.retain(f"{item}/store/01_export.json", "export", "translations", corpus, "--format", "jsonl",
                    "--max-train-per-class", "40", "--max-test-per-class", "1")
        self.write(f"{item}/store/02_exported_files.json", file_hashes(corpus))
        config = self.tmp / "tiny-store.yaml"
        config.write_text(TRANSLATION_STORE)
        self.retain(f"{item}/store/03_init.json", "init", config, "--data", corpus / "00-en-de" / "train.jsonl",
                    "--store", store, "--held-out", "0.5", "--json")
        self.retain(f"{item}/store/04_update.json", "update", store, "--data", corpus / "01-en-fr" / "train.jsonl",
                    "--json")
        sources = self.tmp / "sources.jsonl"
        sources.write_text(SOURCES)
        self.calls({f"{item}/store/05_versions.json": ["versions", store, "--json"],
                    f"{item}/store/06_predict.json": ["predict", store, "--data", sources, "--json"]})
        self.store_files(f"{item}/store/07_store_files.json", store)
        return store

    def openapi(self, store: Path) -> None:
        copy = self.tmp / "openapi-store"  # building the service may touch the store's records
        shutil.copytree(store, copy)
        done = self.python("-c", OPENAPI, str(copy))
        self.write("06_openapi.json", parsed(done.stdout) if done.returncode == 0 else
                   {"exit": done.returncode, "stderr": self.stderr(done.stderr)})

    def errors(self, store: Path, translation_store: Path) -> None:
        """Bad invocations: each one's exit code, stdout and stderr."""
        tmp, csv = self.tmp / "errors", self.tmp / "digits-csv"
        tmp.mkdir()
        (tmp / "empty").mkdir()
        digits = "scenario: {dataset: digits}\n"
        files = {"unknown_strategy.yaml": digits + "strategies: [nosuch]\n",
                 "misspelt_field.yaml": digits + "strategies: [finetune]\ntrainng: {epochs: 1}\n",
                 "negative_epochs.yaml": digits + "strategies: [finetune]\ntraining: {epochs: -1}\n",
                 "broken.yaml": "scenario: {dataset: digits\nstrategies: [finetune\n",
                 "bad_device.yaml": "task: translation\ntraining: {device: gpu}\n",
                 "prompt_too_long.yaml": "task: translation\nmodel: {name: tiny}\ncorpus: {languages: [de], n_train: 4,"
                                         " n_test: 2}\ntraining: {max_tokens: 16}\ngeneration: {perplexity_texts: 0}\n",
                 "bad_pairs.jsonl": '{"source": "x", "lang": "de"}\n',
                 "bad_sources.jsonl": '{"text": "x"}\n'}
        for name, text in files.items():
            (tmp / name).write_text(text)
        (tmp / "narrow.csv").write_text("\n".join(",".join(line.split(",")[1:]) for line in
                                                  (csv / "01" / "train.csv").read_text().splitlines()))
        (tmp / "full").mkdir()
        (tmp / "full" / "x.txt").write_text("x")
        loop, train = self.tmp / "loop.yaml", csv / "01" / "train.csv"
        cases = {
            "unknown_command": ["nosuch"],
            "run_missing_config": ["run", tmp / "nowhere.yaml"],
            "run_unknown_strategy": ["run", tmp / "unknown_strategy.yaml", "--out", tmp / "r1"],
            "run_misspelt_field": ["run", tmp / "misspelt_field.yaml", "--out", tmp / "r2"],
            "run_negative_epochs": ["run", tmp / "negative_epochs.yaml", "--out", tmp / "r3"],
            "run_broken_yaml": ["run", tmp / "broken.yaml", "--out", tmp / "r4"],
            "run_out_not_empty": ["run", self.tmp / "digits_quick.yaml", "--out", tmp / "full"],
            "run_translation_bad_device": ["run", tmp / "bad_device.yaml", "--out", tmp / "r5"],
            "run_translation_prompt_too_long": ["run", tmp / "prompt_too_long.yaml", "--out", tmp / "r6"],
            "export_unknown_dataset": ["export", "nosuch", tmp / "e1", "--format", "csv"],
            "export_negative_max": ["export", "digits", tmp / "e2", "--format", "csv", "--max-train-per-class", "-3"],
            "init_missing_data": ["init", loop, "--data", tmp / "nowhere.csv", "--store", tmp / "s1"],
            "init_existing_store": ["init", loop, "--data", train, "--store", store],
            "init_password_in_url": ["init", loop, "--data", train, "--store", tmp / "s4", "--database",
                                     "postgresql://me:secret@localhost/db"],
            "update_missing_store": ["update", tmp / "nostore", "--data", train],
            "update_narrow_rows": ["update", store, "--data", tmp / "narrow.csv"],
            "predict_bad_version": ["predict", store, "--data", csv / "01" / "test.csv", "--version", "99"],
            "predict_missing_data": ["predict", store, "--data", tmp / "nowhere.csv"],
            "diff_missing_version": ["diff", store, "1", "9", "--json"],
            "rollback_missing_version": ["rollback", store, "99"],
            "serve_not_a_store": ["serve", tmp / "empty"],
            "tune_missing_config": ["tune", tmp / "nowhere.yaml"],
            "translation_diff_refused": ["diff", translation_store, "1", "2"],
            "translation_update_bad_pairs": ["update", translation_store, "--data", tmp / "bad_pairs.jsonl"],
            "translation_predict_bad_sources": ["predict", translation_store, "--data", tmp / "bad_sources.jsonl"],
        }
        self.calls({f"07_errors/{name}.json": argv for name, argv in cases.items()})

    def old_stores(self, kept: Path) -> None:
        """Stores an earlier run kept, opened (copies) by this commit: one more batch, versions, predictions."""
        csv, corpus = self.tmp / "digits-csv", self.tmp / "corpus"
        self.old_store(kept, "classifier", csv / "02" / "train.csv", [csv / "02" / "test.csv", "--top-k", "2"])
        self.old_store(kept, "translation", corpus / "02-en-es" / "train.jsonl", [self.tmp / "sources.jsonl"])

    def old_store(self, kept: Path, kind: str, batch: Path, query: list) -> None:
        item = f"08_old_stores/{kind}"
        if not (kept / kind).is_dir():
            self.write(f"{item}/missing.txt", f"{kind} is not in the kept stores\n")
            return
        store = self.tmp / f"old-{kind}"
        shutil.copytree(kept / kind, store)
        self.retain(f"{item}/01_update.json", "update", store, "--data", batch, "--json")
        self.retain(f"{item}/02_versions.json", "versions", store, "--json")
        self.retain(f"{item}/03_predict.json", "predict", store, "--data", *query, "--json")
        self.store_files(f"{item}/04_store_files.json", store)


def keep(stores: dict[str, Path], folder: Path) -> None:
    """Copies of ``stores`` in ``folder``, one subfolder per kind, replacing earlier ones."""
    for kind, store in stores.items():
        shutil.rmtree(folder / kind, ignore_errors=True)
        shutil.copytree(store, folder / kind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="a new or empty folder for the outputs")
    parser.add_argument("--keep-stores", type=Path, help="copy the stores this run makes here (then open them)")
    parser.add_argument("--old-stores", type=Path, help="open, update and query the stores an earlier run kept here")
    parser.add_argument("--smoke", action="store_true", help="every step, with only the first of each list of "
                        "store reads and bad invocations: a check that the script runs (under a minute)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"golden: {args.out} already holds files; choose an empty --out")
    if args.old_stores and not args.old_stores.is_dir():
        sys.exit(f"golden: --old-stores {args.old_stores} is not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
        golden = Golden(args.out.resolve(), Path(tmp).resolve(), args.smoke)
        print(f"golden: judging {golden.locate()}", file=sys.stderr)

        def step(label: str, job, *inputs):
            begun = time.perf_counter()
            result = job(*inputs)
            print(f"golden: {label} {time.perf_counter() - begun:.0f} s", file=sys.stderr)
            return result

        step("help", golden.helps)
        step("strategies", golden.strategies)
        step("digits run", golden.digits_run)
        stores = {"classifier": step("classifier store", golden.classifier_store),
                  "translation": step("translation", golden.translation)}
        if args.keep_stores:
            keep(stores, args.keep_stores)  # before the error table touches them
        step("openapi", golden.openapi, stores["classifier"])
        step("errors", golden.errors, stores["classifier"], stores["translation"])
        if args.old_stores or args.keep_stores:
            step("old stores", golden.old_stores, args.old_stores or args.keep_stores)
    print(f"golden: {args.out} written in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
