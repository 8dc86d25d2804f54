"""``retain export``: a built-in data set, or the translation corpus, written as a user's own files."""

from __future__ import annotations

import argparse

from retain.cli.errors import reported


def export(args: argparse.Namespace) -> int:
    """``retain export``: one folder per batch, in the format asked."""
    from retain.data.export import export as export_files

    if args.dataset == "translations":
        return _export_translations(args)
    with reported(ValueError, OSError):
        folder = export_files(args.dataset, args.folder, args.format, kind=args.kind, n_experiences=args.experiences,
                              test_fraction=args.test_fraction, split_seed=args.split_seed,
                              max_train_per_class=args.max_train_per_class, max_test_per_class=args.max_test_per_class)
    batches = sorted(p.name for p in folder.iterdir() if p.is_dir())
    print(f"{args.dataset} as {args.format}: {len(batches)} batches ({', '.join(batches)}) in {folder}")
    print(f"train on it with a config whose scenario is {{dataset: files, path: {folder}}}")
    return 0


def _export_translations(args: argparse.Namespace) -> int:
    """The translation stream of Debian's catalogues as JSON Lines, one folder per direction."""
    from retain.data.catalogues import CatalogueError, export_jsonl, load_corpus

    with reported(CatalogueError, OSError, user=False):
        if args.format != "jsonl":
            raise CatalogueError(f"--format {args.format}: the translation corpus is written as jsonl")
        corpus = load_corpus(n_train=args.max_train_per_class or 10**9, n_test=args.max_test_per_class or 10**9)
        folder = export_jsonl(corpus, args.folder)
    sizes = ", ".join(f"{d.name} {len(d.train)}/{len(d.test)}" for d in corpus.directions)
    print(f"translation pairs (train/test): {sizes} in {folder}; sizes, packages and licences in corpus.json")
    return 0
