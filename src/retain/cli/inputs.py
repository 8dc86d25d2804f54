"""What a store command is pointed at, checked before anything is read or made: ``--data`` (one batch, not a
folder of batches; a table whose header names each column once) and what an interrupted ``retain init`` left."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from retain.cli.errors import CommandError

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _split(folder: Path, split: str) -> Path | None:
    """The ``split`` part (train or test) of a batch folder as ``retain export`` writes it, if ``folder`` is one:
    a table or .npz named so, or a folder of class folders, of arrays or a datasets folder."""
    for part in sorted(folder.iterdir()):
        if part.stem != split:
            continue
        if part.is_file() or (part / "x.npy").is_file() or (part / "state.json").is_file() or any(
                p.is_dir() for p in part.iterdir()):
            return part
    return None


def check_data(path: str, split: str = "train") -> None:
    """Refuse a ``--data`` that is not one batch's rows, saying what to give instead (``split``: the part of a
    batch folder the command reads: train to learn, test to evaluate); and a table whose header repeats a column.

    A batch folder with train and test, as ``retain run`` reads and ``retain export`` writes, would otherwise be
    read as a folder of two image classes named train and test."""
    folder = Path(path)
    if not folder.exists():  # said before a store is made for it
        raise CommandError(f"--data {path}: no such file or folder")
    if folder.is_dir():
        part = _split(folder, split)
        if part is not None:
            raise CommandError(f"--data {path}: a batch folder (train and test, the layout retain run reads); "
                                 f"give one batch's rows, its {split} part: --data {part}")
        batches = [d for d in sorted(folder.iterdir()) if d.is_dir() and _split(d, split) is not None]
        if batches:
            raise CommandError(f"--data {path}: a folder of {len(batches)} batch folders "
                                 f"({', '.join(d.name for d in batches[:4])}{', ...' if len(batches) > 4 else ''}); "
                                 f"give one batch's rows at a time, e.g. --data {_split(batches[0], split)}")
    elif folder.is_file() and folder.suffix.lower() in (".csv", ".tsv"):
        with open(folder, newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle, delimiter="\t" if folder.suffix.lower() == ".tsv" else ","), [])
        seen: dict[str, int] = {}
        for number, name in enumerate(header, start=1):
            if name in seen:
                raise CommandError(f"{path}: the header names column {name!r} twice (columns {seen[name]} and "
                                     f"{number}); give each column its own name")
            seen[name] = number


def _engine(url: str) -> Engine:
    """An engine on the database at ``url`` (a store's: see :func:`retain.store.store.database_url`)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from retain.store.store import database_url

    return create_engine(database_url(url), poolclass=NullPool)


def _drop_tables(url: str) -> None:
    """Remove a store's tables (and the service's) from the database at ``url``."""
    from retain.store.intake import TABLES as INTAKE
    from retain.store.store import TABLES

    engine = _engine(url)
    try:
        with engine.begin() as db:
            INTAKE.drop_all(db)
            TABLES.drop_all(db)
    finally:
        engine.dispose()


def _unmade(url: str) -> bool | None:
    """Whether the database at ``url`` holds a store with no version (an init that did not finish); None when
    it holds no store (or cannot be read: creating the store will say why)."""
    from sqlalchemy import func, inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from retain.store.store import VERSIONS

    engine = _engine(url)
    try:
        with engine.connect() as db:
            tables = inspect(db).get_table_names()
            if "meta" not in tables:
                return None
            return "versions" not in tables or not db.execute(select(func.count()).select_from(VERSIONS)).scalar()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def left_by_init(store: str, database: str | None, restart: bool) -> None:
    """Deal with what an interrupted or failed ``retain init`` left: a store folder or a database holding a store
    without any version. With ``restart`` it is removed, so the same init can run again; without, the command
    stops saying so. A store with a version, or anything else in the way, is left for init to refuse."""
    from retain.store.store import SQLITE, URL_FILE

    folder = Path(store)
    named = (folder / URL_FILE).read_text().strip() if (folder / URL_FILE).is_file() else None
    databases = [url for url in dict.fromkeys((database, named)) if url and _unmade(url)]
    local = folder / SQLITE
    if local.is_file():  # killed before its tables were committed, the file holds none: no store either
        unmade = _unmade(f"sqlite:///{local.resolve()}")
        versions = folder / "versions"
        folder_left = unmade or (unmade is None and not (versions.is_dir() and any(versions.iterdir())))
    else:
        folder_left = named is not None and named in databases
    if not databases and not folder_left:
        return
    if not restart:
        places = [str(folder)] * bool(folder_left) + [f"the database {url}" for url in databases if url != named]
        raise CommandError(f"{' and '.join(places)} holds a store an earlier retain init left without any version "
                             "(it was interrupted or failed); if no init is running on it, add --restart to remove "
                             "it and start again")
    for url in databases:
        _drop_tables(url)
    if folder_left:
        for entry in folder.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
