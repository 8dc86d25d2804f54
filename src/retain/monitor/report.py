"""Turn run results into ``results.json``, ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from retain.metrics import ExperimentResult  # noqa: E402
from retain.util import slug  # noqa: E402


def percent(mean: float | None, std: float | None = None) -> str:
    """A 0-1 score as a percentage with one decimal (and ``± std``); ``n/a`` when there is none or it is NaN
    (forgetting of a single experience).

    >>> percent(0.8123, 0.01), percent(float("nan"))
    ('81.2 ± 1.0', 'n/a')
    """
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def comparison_table(results: ExperimentResult) -> str:
    """The Markdown table of every method: ACC ± std, forgetting, BWT, FWT, time, memory.

    Args:
        results: a run's results.

    Returns:
        The table, a line a method.
    """
    lines = [
        "| method | mode | ACC % | stream ACC % | forgetting % | BWT % | FWT % | prequential % | gradient steps "
        "| train s | samples/s | peak MB |",
        "|" + " --- |" * 12,
    ]
    for label, m in results.methods.items():
        s, sd = m.summary.mean, m.summary.std
        lines.append(
            f"| {label} | {m.mode} | {percent(s.acc, sd.acc)} | {percent(s.stream_acc)} | "
            f"{percent(s.forgetting)} | {percent(s.bwt)} | {percent(s.fwt)} | {percent(s.prequential_acc)} | "
            f"{s.gradient_steps:.0f} | {s.train_seconds:.2f} | {s.samples_per_second:.0f} | "
            f"{s.peak_mb:.0f} |"
        )
    return "\n".join(lines)


def _heatmap(label: str, matrix: list[list[float]], path: Path, score: str = "accuracy") -> None:
    R = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * R.shape[1], 1.0 + 0.7 * R.shape[0]))
    ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    for (i, j), v in np.ndenumerate(R):
        ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    ax.set_xlabel("tested on experience")
    ax.set_ylabel("after training experience" if R.shape[0] > 1 else "after joint training")
    ax.set_xticks(range(R.shape[1]))
    ax.set_yticks(range(R.shape[0]))
    ax.set_title(f"{label}: {score} %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _curves(results: ExperimentResult, path: Path) -> None:
    n = len(results.stream.experiences)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, m in results.methods.items():
        curve = m.summary.curve
        if len(curve) == n:
            ax.plot(range(1, n + 1), [100 * c for c in curve], marker="o", label=label)
        else:  # trained once on everything: a reference line
            ax.axhline(100 * m.summary.mean.acc, linestyle="--", color="grey", label=f"{label} (whole stream)")
    ax.set_xlabel("experiences trained")
    ax.set_ylabel(f"average {results.stream.score} on experiences seen so far (%)")
    ax.set_xticks(range(1, n + 1))
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _online_curves(results: ExperimentResult, path: Path) -> bool:
    online = {k: m.summary for k, m in results.methods.items() if m.summary.prequential_curve is not None}
    if not online:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, s in online.items():
        # an online run's summary has its curves and consolidations
        assert s.prequential_curve is not None and s.anytime_curve is not None and s.consolidations is not None
        n, acc = zip(*s.prequential_curve, strict=True)
        line = axes[0].plot(n, [100 * a for a in acc], label=label)[0]
        n, acc = zip(*s.anytime_curve, strict=True)
        axes[1].plot(n, [100 * a for a in acc], marker=".", color=line.get_color(), label=label)
        for c in s.consolidations:
            axes[1].axvline(c.at_sample, color=line.get_color(), alpha=0.25, linestyle=":")
    axes[0].set_title("prequential accuracy (test-then-train, cumulative)")
    axes[1].set_title("accuracy on the classes seen so far (dotted: consolidations)")
    for ax in axes:
        ax.set_xlabel("samples seen")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_results(results: ExperimentResult, directory: str | Path) -> Path:
    """Write ``results.json`` (replaced in one step, so a crash leaves the previous version whole).

    Args:
        results: a run's results.
        directory: the folder to write in (made if missing).

    Returns:
        The path of ``results.json``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    staged = out / "results.json.tmp"
    staged.write_text(json.dumps(results.to_dict(), indent=1))
    os.replace(staged, out / "results.json")
    return out / "results.json"


def _file_names(labels: list[str]) -> dict[str, str]:
    """A heat map file name per method label, distinct even where two labels slug alike.

    >>> _file_names(["a/b", "a_b", "replay"])
    {'a/b': 'heatmap_a_b.png', 'a_b': 'heatmap_a_b-2.png', 'replay': 'heatmap_replay.png'}
    """
    names: dict[str, str] = {}
    for label in labels:
        base, k = f"heatmap_{slug(label)}", 1
        while f"{base}{'' if k == 1 else f'-{k}'}.png" in names.values():
            k += 1
        names[label] = f"{base}{'' if k == 1 else f'-{k}'}.png"
    return names


def write_report(results: ExperimentResult, directory: str | Path, intro: str | None = None) -> Path:
    """Write ``results.json``, ``report.md``, one heat map per method and the accuracy curves.

    Args:
        results: a run's results.
        directory: the folder to write in (made if missing).
        intro: what the report says before its curves, instead of the run config's description
            and the comparison table (a translation run writes its own); None: those.

    Returns:
        The folder written.
    """
    out = Path(directory)
    write_results(results, out)
    _curves(results, out / "accuracy_curve.png")
    online = _online_curves(results, out / "online_curves.png")
    heatmaps = []
    files = _file_names(list(results.methods))
    for label, m in results.methods.items():
        name = files[label]
        _heatmap(label, m.summary.matrix, out / name, results.stream.score)
        heatmaps.append(f"![{label}]({name})")
    cfg, stream = results.config, results.stream
    sizes = ", ".join(f"{e.n_train}/{e.n_test}" for e in stream.experiences)
    arrivals = "; ".join(f"batch {e.id}: {', '.join(e.new_classes)}" for e in stream.experiences if e.new_classes)
    arrivals = f"New classes, where each label was first seen: {arrivals}.\n\n" if arrivals else ""
    if stream.read_as:
        arrivals = f"Tables read as: {stream.read_as}.\n\n{arrivals}"
    online_section = (
        "## Online and hybrid runs\n\n![online curves](online_curves.png)\n\n"
        "Prequential accuracy scores each incoming batch before learning from it; online and hybrid "
        "runs see each sample once, hybrid adds consolidations (short offline passes over the memory "
        "and a recent window).\n\n" if online else ""
    )
    intro = intro if intro is not None else f"""# {cfg['name']}

{stream.scenario.replace('_', '-')} stream `{stream.name}`: {len(stream.experiences)} experiences
(train/test samples: {sizes}); model `{cfg['model']['name']}` with a {cfg['model']['head']} head;
{cfg['training']['epochs']} epoch(s) per experience, batch {cfg['training']['batch_size']}, SGD lr
{cfg['training']['lr']} momentum {cfg['training']['momentum']}; seeds {results.seeds}
(mean ± standard deviation over seeds).

{arrivals}{comparison_table(results)}

- **ACC**: final accuracy averaged over experiences; **stream ACC**: the same weighted by test-set size.
- **forgetting**: best earlier accuracy minus final accuracy, averaged over all but the last
  experience (Chaudhry et al. 2018); **BWT** / **FWT**: backward / forward transfer
  (Lopez-Paz & Ranzato 2017). n/a: not defined for a model trained once on the whole stream.
- **prequential**: accuracy on each incoming batch before learning from it (online and hybrid
  modes only); **gradient steps**: optimizer steps per seed, consolidations included.
- **train s**: training time (online and hybrid: the whole pass, evaluation included), mean per
  seed; **samples/s**: training samples over that time; **peak MB**: peak memory while training
  (process resident set on the CPU, allocated memory on a GPU)."""
    score = stream.score
    matrices = (f"{score[0].upper() + score[1:]} matrices "
                "(row: after training experience i; column: tested on experience j)")
    text = f"""{intro.rstrip()}

## Average {score} after each experience

![{score} curve](accuracy_curve.png)

{online_section}## {matrices}

{chr(10).join(heatmaps)}

Versions: {", ".join(f"{k} {v}" for k, v in results.versions.items())}.
"""
    (out / "report.md").write_text(text)
    return out


def versions_table(rows: list[dict[str, Any]]) -> str:
    """The rows of ``Project.versions()`` (a model store's versions) as a Markdown table.

    Args:
        rows: what :meth:`retain.loop.Project.versions` returns.

    Returns:
        The table, a line a version.
    """
    lines = ["| version | parent | promoted | decision | data | held-out accuracy by batch | reason |",
             "|" + " --- |" * 7]
    for r in rows:
        acc = ", ".join(f"{k.removeprefix('batch-')}: {100 * a:.1f}" for k, a in r["accuracy"].items())
        lines.append(f"| {r['version']} | {r['parent'] or ''} | {'yes' if r['promoted'] else ''} | {r['decision']} "
                     f"| {', '.join(r['data'])} | {acc} | {r['reason']} |")
    return "\n".join(lines)
