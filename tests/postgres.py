"""A real PostgreSQL server for the tests: Debian's ``postgresql`` (installed by ``make``), a cluster
in a temporary folder, reached by a Unix socket in that folder (no TCP port), stopped at the end.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is missing: `make test` installs Debian's postgresql")
    return path


class PostgresServer:
    """``start()`` a cluster, ``database()`` a new empty database's URL, ``stop()``."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="retain-pg-"))
        self._names = itertools.count()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> PostgresServer:
        if self._as:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        self._run(_binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._run(_binary("pg_ctl"), "-D", str(data), "-l", str(self.folder / "log"), "-w", "-t", "30",
                  "-o", f"-k {self.folder} -c listen_addresses='' -c fsync=off", "start")
        return self

    def database(self) -> str:
        """A new, empty database on the server, as a SQLAlchemy URL."""
        name = f"db{next(self._names)}"
        self._run(_binary("createdb"), "-h", str(self.folder), "-U", "postgres", name)
        return f"postgresql://postgres@/{name}?host={self.folder}"

    def stop(self) -> None:
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
