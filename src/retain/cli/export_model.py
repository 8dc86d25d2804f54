"""``retain export-model``: a store's version as one file that predicts from raw inputs with torch or onnxruntime."""

from __future__ import annotations

import argparse

from retain.cli.errors import reported

FORMAT_HELP = ("torchscript: needs only torch; takes tables, text (tokenised inside), images and audio. onnx: needs "
               "only onnxruntime; takes tables, images and audio, not text (ONNX has no operator for the WordPiece "
               "tokenizer: a text store is refused, use torchscript)")


def export_model(args: argparse.Namespace) -> int:
    """``retain export-model STORE --format F --out FILE``: write the file, say what it takes and returns."""
    from sqlalchemy.exc import SQLAlchemyError

    from retain.export_model import export_model as export
    from retain.export_model import exported_meta
    from retain.store import StoreError

    with reported(StoreError, ValueError, OSError, SQLAlchemyError, where=str(args.out)):
        out = export(args.store, args.out, args.format, args.version)
    meta = exported_meta(out)
    labels = meta["labels"]
    shown = ", ".join(labels[:10]) + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")
    print(f"version {meta['version']} of {args.store} as {args.format}: {out} ({_size(out.stat().st_size)})")
    print(f"it takes {meta['input']}")
    print(f"it returns {meta['output']}: {shown}")
    if args.format == "torchscript":
        print(f"with only torch: model = torch.jit.load({str(out)!r}); model(inputs); model.labels")
    else:
        print(f"with only onnxruntime: onnxruntime.InferenceSession({str(out)!r}); the metadata entry 'labels' names "
              "the columns")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"
