"""``retain serve``: a model store behind the HTTP API of :mod:`retain.service`."""

from __future__ import annotations

import argparse
import inspect
import os
from typing import TYPE_CHECKING

from retain.cli.errors import reported

if TYPE_CHECKING:
    from retain.config import ServiceConfig


def _settings(args: argparse.Namespace) -> ServiceConfig:
    """The store's service settings, with those of ``--config`` over them: a run config's service: section,
    or the file is the section itself."""
    from retain.config import ServiceConfig, read_yaml
    from retain.loop import Project

    settings: ServiceConfig = Project(args.store).config.service
    if args.config:
        raw = read_yaml(args.config)  # keys given twice and alias bombs refused, as in every config
        whole = any(k in raw for k in ("strategies", "methods", "task"))  # a run or translation config
        section = raw.get("service") or ({} if whole else raw)
        settings = ServiceConfig.model_validate(settings.model_dump() | section)
    return settings


def serve(args: argparse.Namespace) -> int:
    """``retain serve``: uvicorn serving the store, in one process or ``--workers`` of them."""
    with reported():  # before any work: the package checks its extra and names it in one line when missing
        import retain.service  # noqa: F401
    import yaml
    from sqlalchemy.exc import SQLAlchemyError

    from retain.store import StoreError

    with reported(StoreError, OSError, ValueError, yaml.YAMLError, SQLAlchemyError, user=False,
                  invalid=f"invalid service settings in {args.config}"):
        settings = _settings(args)
    import uvicorn

    from retain.service.app import configure_logging

    address = f"http://{args.host}:{args.port}"
    # uvicorn's own access lines lack the time taken: the service writes its own (--access-log)
    run = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": False}
    if args.workers > 1:  # worker processes build the app themselves; metrics are summed across them
        import tempfile

        os.environ["RETAIN_SERVE_STORE"] = str(args.store)
        os.environ["RETAIN_SERVE_SETTINGS"] = settings.model_dump_json()
        os.environ["RETAIN_SERVE_LOG"] = args.log_level + (",access" if args.access_log else "")
        os.environ["RETAIN_SERVE_ADDRESS"] = address
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="retain-metrics-"))
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:
            # a worker answers uvicorn's health check only once it has imported torch: seconds, more on a busy
            # host, where the default 5 s had a worker killed and restarted for ever
            run["timeout_worker_healthcheck"] = 60
        uvicorn.run("retain.service.app:app_from_environment", factory=True, workers=args.workers, **run)
        return 0
    from retain.service.app import create_app

    configure_logging(args.log_level, args.access_log)
    with reported(StoreError, OSError, ValueError, SQLAlchemyError, user=False):
        app = create_app(args.store, settings, updater=not args.no_updater, address=address)
    uvicorn.run(app, **run)
    return 0
