"""``retain serve`` that kills itself (SIGKILL) at one point of an update, for the crash tests.

    python tests/fault_serve.py POINT retain serve STORE --port N ...

POINT: ``in-update`` (the candidate is being saved as a version), ``in-promote`` (inside the
transaction that records and promotes it, before the commit), ``after-version`` (once that
transaction committed), or ``none``.
"""

import os
import signal
import sys

import retain.store.store as store_module
from retain.cli import main


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    point = sys.argv[1]
    if point == "in-update":
        from retain.engine import Learner

        real = Learner.save
        Learner.save = lambda self, folder: (real(self, folder), die())
    elif point == "in-promote":
        store_module.ModelStore._point_at = die
    elif point == "after-version":
        recorded = store_module.ModelStore.add_version
        store_module.ModelStore.add_version = lambda *args, **kwargs: (recorded(*args, **kwargs), die())
    sys.exit(main(sys.argv[3:]))
