"""Nothing learned is lost: a stream whose batches bring similar new classes, under a strict tolerance.

Real data no one here wrote: Debian's package descriptions (``apt-cache dumpavail``; the installed
packages of ``/var/lib/dpkg/status`` where no package lists are kept), labelled by their section.
Batch 00 brings four sections; 01, 02 and 03 bring two new ones each (02 and 03: programming
languages' libraries, alike), 04 more rows of every section. Frozen MiniLM features, SLDA, a strict
``max_drop`` of 2 points. Two stores learn the stream:

- ``old rule``: the rule as it was (the drop itself judged, however few rows; no weight for what the
  candidate learns) and a kept batch's rows left where they fell (``kept: hold``: they wait for a
  retry, as before they were silently never learned);
- ``new rule``: the defaults (a drop judged by its 90% bootstrap bound, small held-out sets judged
  together, the gain on new data weighed, a kept batch's rows carried into the next update).

Measured: each update's decision; how many of each batch's rows the served line learned, wait
(pending or held), or were lost; the served version's accuracy on every batch's held-out rows against
retraining on every row at once (logistic regression and LDA on the same features) and against the
majority class.

    python benchmarks/pending.py --out benchmarks/results/pending.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from retain.config import RunConfig
from retain.loop import Project

STREAM = [["games", "science", "sound", "graphics"], ["net", "admin"], ["python", "perl"], ["ruby", "php"], []]
SMOKE = [["libs", "perl"], ["python"]]  # sections the installed packages have, even on a bare machine
RULES = {"old rule": {"confidence": None, "gain_weight": 0.0, "min_held_out": 1, "kept": "hold"},
         "new rule": {}}


def packages() -> dict[str, list[str]]:
    """Description texts by section: the package lists apt keeps, else the installed packages."""
    try:
        text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    if text.count("\nPackage:") < 1000:
        text = Path("/var/lib/dpkg/status").read_text(errors="replace")
    out: dict[str, list[str]] = {}
    for record in text.split("\n\n"):
        fields, key = {}, None
        for line in record.splitlines():
            if line.startswith(" ") and key == "Description":
                fields[key] += " " + line.strip(" .")
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        section = fields.get("Section", "").split("/")[-1]
        if section and fields.get("Description"):
            out.setdefault(section, []).append(fields["Description"][:600])
    return {s: sorted(set(texts)) for s, texts in out.items()}


def write_stream(folder: Path, stream: list[list[str]], per_class: int, seed: int = 0) -> list[Path]:
    """One CSV (text, label) per batch: each section's rows first in the batch that brings it, then
    a share of every known section's rows in each later batch."""
    texts = packages()
    rng = random.Random(seed)
    pools = {}
    for sections in stream:
        for s in sections:
            pool = list(texts.get(s, []))
            rng.shuffle(pool)
            if len(pool) < per_class * 2:
                raise SystemExit(f"section {s} has {len(pool)} descriptions, fewer than {per_class * 2}")
            pools[s] = pool
    known: list[str] = []
    paths = []
    for b, sections in enumerate(stream):
        rows = [(pools[s].pop(), s) for s in sections for _ in range(per_class)]
        rows += [(pools[s].pop(), s) for s in known for _ in range(per_class // 4)]  # more of the known ones
        known += sections
        rng.shuffle(rows)
        path = folder / f"{b:02d}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths.append(path)
    return paths


def config(rule: dict) -> RunConfig:
    return RunConfig.for_loop({"name": "pending", "model": {"backbone": "minilm", "adaptation": "frozen", "hidden": []},
                               "strategies": ["slda"], "promotion": {"max_drop": 0.02} | rule})


def fate(project: Project, name: str) -> str:
    """Where a batch's rows are: learned by the served line, waiting, or nowhere (lost)."""
    line = {v.id for v in project._line()}
    if name in project.store.held_out_names(list(line)):
        return "served"
    waiting = {p.name: p.status for p in project.store.pending(("pending", "held", "dropped"))}
    return waiting.get(name, "lost")


def overall(project: Project, learner, held: dict) -> float:
    """Accuracy over every row of ``held`` (not the mean of the batches')."""
    rows = project.kind.row_scores(learner, held)
    return float(torch.cat(list(rows.values())).mean())


def retrained(project: Project, paths: list[Path], held: dict) -> dict[str, float]:
    """Every batch's rows but the held-out ones learned at once, on the same features: the store's
    learner (no gate), logistic regression and LDA (SLDA's offline twin); and the majority class."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    known = {h for rows in held.values() for h in rows.hashes()}
    parts = [project.kind.prepare(project.kind.read_batch(p, False)[0]) for p in paths]
    x, y = torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])
    keep = torch.tensor([h not in known for h in parts[0].__class__(x, y, y).hashes()])
    x, y = x[keep].numpy(), y[keep].numpy()
    hx = torch.cat([r.x for r in held.values()]).numpy()
    hy = torch.cat([r.y for r in held.values()]).numpy()
    majority = Counter(y.tolist()).most_common(1)[0][0]
    # the floor: the store's own learner (SLDA on the same features) given every row at once, no gate
    rows = parts[0].__class__(torch.from_numpy(x), torch.from_numpy(y), torch.zeros(len(y), dtype=torch.long))
    names = project.store.labels()
    learner = project.kind.new_learner(rows, names, 0)
    project.kind.fit(learner, rows, rows.take(torch.arange(min(len(rows), 50))), 0, names)
    at_once = overall(project, learner, held)
    return {"same_learner_at_once": at_once,
            "logistic_regression": float((LogisticRegression(max_iter=2000).fit(x, y).predict(hx) == hy).mean()),
            "lda": float((LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y).predict(hx)
                          == hy).mean()),
            "majority_class": float((hy == majority).mean()), "train_rows": len(y), "held_out_rows": len(hy)}


def run(work: Path, stream: list[list[str]], per_class: int) -> dict:
    paths = write_stream(work, stream, per_class)
    out: dict = {"stream": [{"batch": p.name, "new_sections": s} for p, s in zip(paths, stream, strict=True)],
                 "rules": {}}
    for label, rule in RULES.items():
        start = time.perf_counter()
        project, first = Project.init(config(rule), paths[0], work / f"store-{label.replace(' ', '-')}")
        updates = [{"batch": paths[0].name, "version": first.version, "promoted": first.promoted,
                    "reason": first.reason}]
        for path in paths[1:]:
            result = project.update(path)
            updates.append({"batch": path.name, "version": result.version, "promoted": result.promoted,
                            "reason": result.reason, "gate": result.gate})
            print(json.dumps({"rule": label} | updates[-1]), flush=True)
        names = project.store.held_out_names()
        sizes = {b.source: b.rows for v in project.store.versions() for b in v.batches if b.role == "train"}
        held = project.held_out([v.id for v in project.store.versions()])
        served = project.store.load(device="cpu")
        out["rules"][label] = {
            "updates": updates, "seconds": time.perf_counter() - start,
            "batches": {n: fate(project, n) for n in names},
            "rows_not_served": sum(p.rows for p in project.store.pending(("pending", "held", "dropped"))),
            "rows_learned_by_any_version": sum(sizes.values()),
            "served_version": project.store.promoted(),
            "served_accuracy": overall(project, served, held)}
        out["retrained"] = retrained(project, paths, held)  # same held-out rows in both stores (same splits)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--per-class", type=int, default=150, help="rows a section brings in its first batch")
    parser.add_argument("--smoke", action="store_true", help="the smallest setting: two batches, three sections")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), SMOKE if args.smoke else STREAM, 12 if args.smoke else args.per_class)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
