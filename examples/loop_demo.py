"""The loop end to end (make run): Fashion-MNIST exported as files arrives batch by batch into a
model store: version 1 from the first batch, then new classes, one batch with 30% of its labels
flipped (the gate refuses it), and the clean rest. Writes the versions table and the accuracy of
every batch after every version to OUT/report.md (and a plot), as `retain versions` shows them.

    python examples/loop_demo.py --out runs/loop
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from retain.config import load_config  # noqa: E402
from retain.data.export import export  # noqa: E402
from retain.loop import Project  # noqa: E402
from retain.monitor import versions_table  # noqa: E402

HERE = Path(__file__).parent


def flip_labels(source: Path, target: Path, share: float) -> None:
    """A copy of a batch folder of class folders with ``share`` of its images moved to the next
    class's folder: labels flipped, as a faulty annotation job would."""
    shutil.copytree(source, target)
    classes = sorted(d.name for d in target.iterdir())
    images = sorted(target.glob("*/*.png"))
    for i, image in enumerate(images):
        if i % 10 < round(10 * share):
            other = classes[(classes.index(image.parent.name) + 1) % len(classes)]
            image.rename(target / other / image.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/loop"))
    parser.add_argument("--per-class", type=int, default=300, help="training images per class to export")
    args = parser.parse_args()
    marker = args.out / ".retain-loop-demo"  # written first: a demo stopped half-way is replaced too
    if args.out.exists() and any(args.out.iterdir()):
        if not (marker.is_file() or (args.out / "store").is_dir()):  # only a previous demo's folder is replaced
            parser.error(f"{args.out} holds files that are not a previous demo run; choose another --out")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    marker.write_text("a folder of examples/loop_demo.py, replaced by its next run\n")
    data = export("fashion_mnist", args.out / "data", "images", max_train_per_class=args.per_class,
                  max_test_per_class=args.per_class // 3)
    corrupted = args.out / "data" / "02-flipped"
    flip_labels(data / "02" / "train", corrupted, 0.3)
    arrivals = [data / "01" / "train", corrupted, data / "02" / "train", data / "03" / "train", data / "04" / "train"]
    config = load_config(HERE / "loop_fashion.yaml", loop=True)
    print(f"retain init: version 1 from {data / '00' / 'train'}")
    project, result = Project.init(config, data / "00" / "train", args.out / "store")
    history = [(1, result.accuracy)]
    print(f"  {result.reason}; gate: {result.gate}")
    for batch in arrivals:
        result = project.update(batch)
        name = batch.relative_to(data)
        if result.version is None:
            print(f"retain update {name}: not learned, {result.reason}")
            continue
        state = "promoted" if result.promoted else "kept"
        print(f"retain update {name}: version {result.version} {state} ({result.reason}); "
              f"new classes {', '.join(result.new_classes) or 'none'}; gate: {result.gate}")
        history.append((result.version, result.accuracy))
    table = versions_table(project.versions())
    print("\n" + table)
    batches = sorted({b for _, acc in history for b in acc})
    matrix = ["| version | " + " | ".join(batches) + " |", "|" + " --- |" * (len(batches) + 1)]
    matrix += [f"| {v} | " + " | ".join(f"{100 * acc[b]:.1f}" if b in acc else "" for b in batches) + " |"
               for v, acc in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for b in batches:
        points = [(v, 100 * acc[b]) for v, acc in history if b in acc]
        ax.plot(*zip(*points, strict=True), marker="o", label=b)
    ax.set_xlabel("version")
    ax.set_ylabel("held-out accuracy %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out / "accuracy.png", dpi=100)
    report = args.out / "report.md"
    report.write_text("# The loop on a model store\n\nFashion-MNIST arriving in batches of two garments; batch "
                      "02-flipped has 30% of its labels wrong.\n\n## Versions\n\n" + table +
                      "\n\n## Held-out accuracy of every batch after every version (%)\n\n" + "\n".join(matrix) +
                      "\n\n![accuracy](accuracy.png)\n")
    print(f"\nreport: {report}")


if __name__ == "__main__":
    main()
