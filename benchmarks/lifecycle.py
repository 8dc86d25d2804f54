"""The loop on a model store with real exported data, with and without the gate, against retraining.

For each stream (Fashion-MNIST as PNG folders with frozen EfficientNet-Lite0 features and the fortunes'
languages as a CSV of texts with frozen MiniLM features, SLDA on both; synthesised keywords as WAV
folders, log-mel features, a CNN with DER++): version 1 from batch 00, then
five arrivals: 01, a copy of 02 with 30% of its labels flipped, 02, 03 with 20% of its rows repeated,
and 04. Measured: each update's decision, the gate's precision and recall on the flipped rows, the
final promoted version's accuracy on all held-out rows against SLDA retrained on every clean batch at
once, the worst drop of an earlier batch, update time besides encoding, and the same run without the
gate (policy warn, nothing refused) to show what the flipped batch costs.

The gate is measured on its own too (nothing learned): the share of each clean batch's rows it
flags (label errors and outliers: every one is a false flag), its precision and recall on the
flipped rows, its drift line (the batch's features against the store's rows, a report that
refuses nothing), and its decision on a shifted clean batch that must not be refused:
the test rows of every batch as a new kind of data (images with a grey floor, lower contrast and a
blur; clips at half volume under noise; for the languages, Debian's program messages instead of
quotes), judged by the final gated store.

    python benchmarks/lifecycle.py --out benchmarks/results/lifecycle.json
    python benchmarks/lifecycle.py --smoke   # one small stream, a check that the script still runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from retain.build import build_learner, model_inputs
from retain.config import load_config
from retain.data import Experience, Stream
from retain.data.export import export
from retain.data.files import LabelMap, load
from retain.engine import Learner
from retain.loop import Project
from retain.quality import GateReport
from retain.quality.gate import row_hashes

ROOT = Path(__file__).resolve().parent.parent
STREAMS = {
    "vision": ("fashion_mnist", "images", ROOT / "examples" / "loop_fashion.yaml", {"max_train_per_class": 300,
                                                                                   "max_test_per_class": 100}),
    "text": ("fortunes_language", "csv", None, {}),
    "audio": ("keywords", "wav", None, {}),
}
AUDIO_CONFIG = {"name": "loop-audio", "scenario": {"dataset": "keywords"},
                "model": {"backbone": "logmel", "name": "audio_cnn"}, "training": {"epochs": 8, "lr": 0.05},
                "strategies": [{"name": "derpp", "memory_size": 800, "ratio": 2.0, "alpha": 0.5}],
                "promotion": {"max_drop": 0.15}}
SMOKE = {"max_train_per_class": 30, "max_test_per_class": 10}  # --smoke: every step, few rows
TEXT_CONFIG = {"name": "loop-text", "scenario": {"dataset": "fortunes_language"},
               "model": {"backbone": "minilm", "adaptation": "frozen", "hidden": []}, "strategies": ["slda"],
               "promotion": {"max_drop": 0.15}}


def corrupt(data: Path, fmt: str, work: Path) -> tuple[Path, Path]:
    """A copy of batch 02 with 30% of its labels flipped (and which rows), and batch 03 with 20% of
    its rows repeated."""
    flipped, doubled = work / "02-flipped", work / "03-doubled"
    if fmt in ("images", "wav"):
        suffix = "png" if fmt == "images" else "wav"
        shutil.copytree(data / "02" / "train", flipped)
        classes = sorted(d.name for d in flipped.iterdir())
        for i, item in enumerate(sorted(flipped.glob(f"*/*.{suffix}"), key=lambda p: p.name)):
            if i % 10 < 3:
                item.rename(flipped / classes[(classes.index(item.parent.name) + 1) % len(classes)] / item.name)
        shutil.copytree(data / "03" / "train", doubled)
        for i, item in enumerate(sorted(doubled.glob(f"*/*.{suffix}"))):
            if i % 5 == 0:
                shutil.copy(item, item.with_name(f"copy-{item.name}"))
    else:
        lines = (data / "02" / "train.csv").read_text().splitlines()
        import csv
        import io

        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        labels = sorted({r[-1] for r in rows[1:]})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(rows[0])
        for i, row in enumerate(rows[1:]):
            if i % 10 < 3:
                row = row[:-1] + [labels[(labels.index(row[-1]) + 1) % len(labels)]]
            writer.writerow(row)
        flipped = flipped.with_suffix(".csv")
        flipped.write_text(out.getvalue())
        lines = (data / "03" / "train.csv").read_text().splitlines()
        doubled = doubled.with_suffix(".csv")
        doubled.write_text("\n".join(lines + lines[1::5]) + "\n")
    return flipped, doubled


def shifted(data: Path, fmt: str, work: Path, per_class: int) -> Path:
    """A clean batch of a new kind of data for the stream's classes, from rows no batch trained on:
    each class's first ``per_class`` test images with a grey floor, half the contrast and a blur,
    or test clips at half volume under noise (10 dB SNR); for the languages, Debian's program
    messages (its translation catalogues) instead of quotes."""
    out = work / "shifted"
    if fmt == "images":
        from PIL import Image, ImageFilter

        for cls in sorted({d.name for d in data.glob("*/test/*") if d.is_dir()}):
            (out / cls).mkdir(parents=True)
            for item in sorted(data.glob(f"*/test/{cls}/*.png"))[:per_class]:
                image = Image.open(item).point(lambda v: 80 + v // 2).filter(ImageFilter.GaussianBlur(1))
                image.save(out / cls / f"{item.parent.parent.parent.name}-{item.name}")
        return out
    if fmt == "wav":
        import numpy as np
        from scipy.io import wavfile

        rng = np.random.default_rng(0)
        for cls in sorted({d.name for d in data.glob("*/test/*") if d.is_dir()}):
            (out / cls).mkdir(parents=True)
            for item in sorted(data.glob(f"*/test/{cls}/*.wav"))[:per_class]:
                rate, clip = wavfile.read(item)
                clip = 0.5 * clip.astype(np.float32)
                noise = rng.standard_normal(len(clip)).astype(np.float32) * np.sqrt(np.mean(clip ** 2) / 10)
                wavfile.write(out / cls / f"{item.parent.parent.parent.name}-{item.name}", rate,
                              np.clip(clip + noise, -1, 1).astype(np.float32))
        return out
    import csv
    import random

    from retain.data.catalogues import CATALOGUES, read_language

    codes = {"german": "de", "spanish": "es", "italian": "it", "russian": "ru", "polish": "pl", "czech": "cs",
             "portuguese": "pt_BR"}
    catalogues = {k: CATALOGUES[k] for k in ("coreutils", "dpkg", "apt", "bash", "grep", "findutils", "tar")}
    names = json.loads((data / "labels.json").read_text())
    rows = []
    english = []
    for name in names:
        if name not in codes:
            continue
        pairs = [p for p in read_language(codes[name], catalogues) if len(p.target) >= 30]
        random.Random(0).shuffle(pairs)
        rows += [(p.target, name) for p in pairs[:per_class]]
        english += [p.source for p in pairs[per_class:]]
    if "english" in names:
        english = sorted({t for t in english if len(t) >= 30})
        random.Random(0).shuffle(english)
        rows += [(t, "english") for t in english[:per_class]]
    out = out.with_suffix(".csv")
    with out.open("w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return out


def run(name: str, work: Path, smoke: bool = False) -> dict:
    dataset, fmt, config_path, options = STREAMS[name]
    data = export(dataset, work / "data", fmt, **(SMOKE if smoke else options))
    cfg = load_config(config_path, loop=True) if config_path else None
    if cfg is None:
        from retain.config import RunConfig

        cfg = RunConfig.model_validate(AUDIO_CONFIG if name == "audio" else TEXT_CONFIG)
    folders = fmt in ("images", "wav")
    split = (lambda b: data / b / "train") if folders else (lambda b: data / b / "train.csv")
    flipped, doubled = corrupt(data, fmt, work)
    arrivals = [("01", split("01")), ("02 flipped 30%", flipped), ("02", split("02")),
                ("03 + 20% duplicates", doubled), ("04", split("04"))]
    out: dict = {"stream": name, "updates": [], "gate": {}}
    projects = {}
    for gate in ("on", "off"):
        config = cfg if gate == "on" else cfg.model_copy(update={"gate": cfg.gate.__class__(
            policy="warn", max_flagged=1.0)})
        project, _ = Project.init(config, split("00"), work / f"store-{gate}")
        for label, path in arrivals:
            if gate == "on":  # the gate on its own, as the update is about to see the batch
                out["gate"][label] = gate_scores(project, path, split("02") if "flipped" in label else None)
            start = time.perf_counter()
            labels = LabelMap(project.store.labels())
            raw = load(path, labels, **config.scenario.files.options()).x
            encode_start = time.perf_counter()
            model_inputs(config, raw)
            encode = time.perf_counter() - encode_start
            result = project.update(path)
            seconds = time.perf_counter() - start
            row = {"gate": gate, "batch": label, "version": result.version, "promoted": result.promoted,
                   "reason": result.reason, "gate_report": result.gate, "seconds": seconds,
                   "encode_seconds": encode, "rows": len(raw)}
            out["updates"].append(row)
            print(json.dumps(row), flush=True)
        projects[gate] = project
        versions = {v["version"]: v for v in project.versions()}
        line = [v for v in versions.values() if v["decision"] == "promoted"]
        accs = [v["accuracy"] for v in line]
        out[f"promoted_gate_{gate}"] = [v["version"] for v in line]
        # per update: against the parent it replaced (what the rule holds); since learned: the best
        # any promoted version had on a batch against the last
        out[f"worst_update_drop_gate_{gate}"] = max(
            (versions[v["parent"]]["accuracy"][b] - v["accuracy"][b] for v in line[1:]
             for b in versions[v["parent"]]["accuracy"]), default=0.0)
        out[f"worst_drop_gate_{gate}"] = max(
            (first[b] - accs[-1][b] for first in accs for b in first if b in accs[-1]), default=0.0)
    out["gate"]["shifted"] = gate_scores(projects["on"], shifted(data, fmt, work, 10 if smoke else 40))
    out |= gate_summary(out["gate"])
    print(json.dumps({"stream": name, "gate": out["gate"]}), flush=True)
    held = projects["on"].held_out()  # every clean batch's held-out rows, as the gated store kept them
    x, y = torch.cat([v[0] for v in held.values()]), torch.cat([v[1] for v in held.values()])
    hashes = row_hashes(x)
    for gate, project in projects.items():
        trained = {bytes(h.tolist()).hex() for name in project.store.data_names() if name.endswith("-train")
                   for h in project.store.get_data(name)["hash"]}
        fair = torch.tensor([h not in trained for h in hashes])  # rows this store never trained on
        final = project.store.load(device="cpu")
        out[f"final_acc_gate_{gate}"] = float((final.predict(x[fair]) == y[fair]).float().mean())
        out[f"scored_rows_gate_{gate}"] = int(fair.sum())
    retrained = retrain(cfg, data, folders, projects["on"], x)
    out["retrain_acc"] = float((retrained.predict(x) == y).float().mean())
    # The floor of the drop since learned: how far retraining on everything falls below the best
    # the loop had on each batch (class interference, not forgetting)
    best = {b: max(a[b] for a in (v["accuracy"] for v in projects["on"].versions() if v["decision"] == "promoted")
                   if b in a) for b in held}
    out["retrain_drop"] = max(best[b] - float((retrained.predict(v[0]) == v[1]).float().mean())
                              for b, v in held.items())
    if name == "text" and not smoke:
        out |= update_seconds(projects["on"], data, work)
    return out


def update_seconds(project: Project, data: Path, work: Path, rows: int = 200) -> dict:
    """An update with ``rows`` new rows (the test rows of batches 04 and 03, never learned): in this
    process once their features are cached (the update besides encoding), and as a user runs
    ``retain update`` (a new process: Python, imports, the tokenizer; features still cached) on a
    copy of the store."""
    lines = (data / "04" / "test.csv").read_text().splitlines()
    lines += (data / "03" / "test.csv").read_text().splitlines()[1:]
    batch = work / f"new-{rows}.csv"
    batch.write_text("\n".join(lines[:rows + 1]) + "\n")
    copy = work / "store-cli"
    shutil.copytree(project.store.path, copy)
    start = time.perf_counter()
    raw = load(batch, LabelMap(project.store.labels()), **project.config.scenario.files.options()).x
    model_inputs(project.config, raw)
    encode = time.perf_counter() - start
    start = time.perf_counter()
    result = Project(project.store.path).update(batch)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "retain.cli", "update", str(copy), "--data", str(batch), "--json"],
                          capture_output=True, text=True, check=False)
    cli = time.perf_counter() - start
    return {"update_rows": len(raw), "update_seconds_cached_features": seconds, "update_encode_seconds": encode,
            "update_promoted": result.promoted, "update_cli_seconds": cli, "update_cli_exit": done.returncode}


def gate_report(project: Project, path: Path) -> GateReport:
    """The gate's report on the batch at ``path`` as the next update's gate would make it, nothing
    learned: against the served model, its batches' held-out rows and the hashes of their training rows."""
    kind, store = project.kind, project.store
    rows, _ = kind.read_batch(path, False)
    current = store.load(device="cpu")
    rows = kind.readable(current, kind.prepare(rows), str(path))
    held = project.held_out()
    known = {h for part in held.values() for h in part.hashes()}
    known |= {bytes(h.tolist()).hex() for name in held if f"{name}-train" in store.data_names()
              for h in store.get_data(f"{name}-train")["hash"]}
    return kind.inspect(rows, current, held, known, project.seed)


def gate_scores(project: Project, path: Path, clean: Path | None = None) -> dict:
    """What the gate finds in the batch at ``path``: the share of rows flagged as label errors or
    outliers, its decision and drift line, and with ``clean`` (the batch with its true labels)
    its precision and recall on the rows whose label differs."""
    start = time.perf_counter()
    report = gate_report(project, path)
    seconds = time.perf_counter() - start
    found = set(report.label_issues) | set(report.outliers)
    scores = {"rows": report.rows, "flagged": len(found) / report.rows, "label_issues": len(report.label_issues),
              "outliers": len(report.outliers), "duplicates": len(report.duplicates),
              "decision": report.decision, "reason": report.reason, "seconds": seconds}
    if clean is not None:  # rows matched by content, so the files' order does not matter
        labels = LabelMap(project.store.labels())
        options = project.config.scenario.files.options()
        truth = load(clean, labels, **options)
        rows = load(path, labels, **options)
        label_of = dict(zip(row_hashes(truth.x), truth.y.tolist(), strict=True))
        wrong = {i for i, (h, y) in enumerate(zip(row_hashes(rows.x), rows.y.tolist(), strict=True))
                 if label_of[h] != y}
        hit = len(found & wrong)
        scores |= {"flipped_rows": len(wrong), "precision": hit / max(len(found), 1),
                   "recall": hit / max(len(wrong), 1)}
    return scores


def gate_summary(gate: dict) -> dict:
    """The gate's figures for the table: flagged shares of the clean batches, the flipped batch's
    precision and recall, the shifted batch's decision."""
    clean = {b: g["flagged"] for b, g in gate.items() if "flipped" not in b and b != "shifted"}
    flipped = next(g for b, g in gate.items() if "flipped" in b)
    return {"gate_false_flags_max": max(clean.values()), "gate_false_flags_mean": sum(clean.values()) / len(clean),
            "gate_precision": flipped["precision"], "gate_recall": flipped["recall"],
            "gate_flipped_decision": flipped["decision"], "gate_shifted_flagged": gate["shifted"]["flagged"],
            "gate_shifted_decision": gate["shifted"]["decision"]}


def retrain(cfg, data: Path, folders: bool, project: Project, held_x: torch.Tensor) -> Learner:
    """The config's method fitted once on every clean batch's rows but the held-out ones (for SLDA,
    exactly LDA on them)."""
    labels = LabelMap(project.store.labels())
    held = set(row_hashes(held_x))
    xs, ys = [], []
    for b in ("00", "01", "02", "03", "04"):
        rows = load(data / b / ("train" if folders else "train.csv"), labels,
                    **cfg.scenario.files.options())
        x = model_inputs(cfg, rows.x)
        keep = torch.tensor([h not in held for h in row_hashes(x)])
        xs.append(x[keep])
        ys.append(rows.y[keep])
    x, y = torch.cat(xs), torch.cat(ys)
    exp = Experience(x, y, x[:0], y[:0], id=0)
    learner = build_learner(Stream([exp], n_classes=len(labels.names), class_names=labels.names), cfg,
                            cfg.strategies[0], 0)
    learner.fit(exp)
    return learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", nargs="+", choices=list(STREAMS), default=list(STREAMS))
    parser.add_argument("--smoke", action="store_true", help="the text stream with 30 rows a class (under 30 s): "
                        "checks that the script runs, measures nothing")
    parser.add_argument("--out", type=Path, help="a JSON file to write the streams' results into (streams not run "
                        "this time keep theirs)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in ["text"] if args.smoke else args.streams:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run(name, Path(tmp), args.smoke))
        summary = {k: v for k, v in rows[-1].items() if k not in ("updates", "gate")}
        print(json.dumps(summary), flush=True)
    if args.out:
        kept = json.loads(args.out.read_text()) if args.out.exists() else []
        ran = {r["stream"] for r in rows}
        args.out.write_text(json.dumps([r for r in kept if r["stream"] not in ran] + rows, indent=1))


if __name__ == "__main__":
    main()
