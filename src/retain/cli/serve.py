"""``retain serve``: a model store behind the HTTP API of :mod:`retain.service`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from retain.cli.errors import reported


def _settings(args: argparse.Namespace):
    """The store's service settings, with those of ``--config`` over them: a run config's service: section,
    or the file is the section itself."""
    import yaml

    from retain.config import ServiceConfig
    from retain.loop import Project

    settings = Project(args.store).config.service
    if args.config:
        raw = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{args.config} must hold a mapping (a service: section, or its settings)")
        whole = any(k in raw for k in ("strategies", "methods", "task"))  # a run or translation config
        section = raw.get("service") or ({} if whole else raw)
        settings = ServiceConfig.model_validate(settings.model_dump() | section)
    return settings


def serve(args: argparse.Namespace) -> int:
    """``retain serve``: uvicorn serving the store, in one process or ``--workers`` of them."""
    import yaml
    from sqlalchemy.exc import SQLAlchemyError

    from retain.store import StoreError

    with reported(StoreError, OSError, ValueError, yaml.YAMLError, SQLAlchemyError, user=False,
                  invalid=f"invalid service settings in {args.config}"):
        settings = _settings(args)
    import uvicorn

    if args.workers > 1:  # worker processes build the app themselves; metrics are summed across them
        import tempfile

        os.environ["RETAIN_SERVE_STORE"] = str(args.store)
        os.environ["RETAIN_SERVE_SETTINGS"] = settings.model_dump_json()
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="retain-metrics-"))
        uvicorn.run("retain.service.app:app_from_environment", factory=True, host=args.host, port=args.port,
                    workers=args.workers, log_level=args.log_level)
        return 0
    from retain.service.app import create_app

    with reported(StoreError, OSError, ValueError, SQLAlchemyError, user=False):
        app = create_app(args.store, settings, updater=not args.no_updater)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
