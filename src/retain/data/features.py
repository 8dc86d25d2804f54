"""Features of a frozen backbone, computed in batches and cached on disk row by row.

Each row's features are kept under its own key: a SHA-256 of the backbone id and of that row's
input (shape, dtype, bytes), so a changed input or a different backbone is a miss. A batch whose
rows were encoded before (one by one, or in other batches) is read, not encoded; a batch partly
seen encodes only its new rows.

The cache is one SQLite file, ``features.sqlite``, in the cache folder: every write is a
transaction, so threads and processes sharing the folder never read a half-written row nor
trip over each other's temporary files. It holds at most ``max_mb`` megabytes (default 256, or
the environment variable ``RETAIN_CACHE_MAX_MB``); past that, the rows used longest ago are
evicted and the file shrinks. Each row carries a checksum of its features: a row that does not
match, or a file that is not a readable database, is reported, dropped and recomputed, never
used. A cache that cannot be written (a full or read-only disk) is reported and skipped.

A stream of frozen-backbone features is what *latent replay* trains on: the memory of any
replay strategy then holds feature vectors, not raw inputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from retain.data.experience import Stream
from retain.util import evaluating, in_batches, module_device

# How features are computed: (encoder, inputs, batch size, progress label, progress bar) -> features.
Encode = Callable[[nn.Module, Tensor, int, str, bool], Tensor]

MAX_MB = 256.0  # the default cap: some 170,000 rows of 384-d features, well under a laptop's free disk
FILE = "features.sqlite"
CHUNK = 500  # keys per statement (older SQLite builds bind at most 999 parameters)
_OLD_FILES = re.compile(r".+-[0-9a-f]{32}(\.safetensors|\.\d+\.tmp)")  # a cache before rows had keys


def tensor_digest(x: Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes.

    >>> a = torch.zeros(3, 2); b = a.clone(); b[1, 1] = 1e-6
    >>> tensor_digest(a) == tensor_digest(a.clone()), tensor_digest(a) == tensor_digest(b)
    (True, False)
    """
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def row_keys(backbone_id: str, x: Tensor) -> list[bytes]:
    """A key for each row of ``x``: a SHA-256 of the backbone id and the row's shape, dtype and bytes.

    >>> keys = row_keys("a", torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]]))
    >>> keys[0] == keys[1], keys[0] == keys[2], keys[0] == row_keys("b", torch.tensor([[1.0, 2.0]]))[0]
    (True, False, False)
    """
    if len(x) == 0:
        return []
    base = hashlib.sha256(f"{backbone_id}|{tuple(x.shape[1:])}|{x.dtype}|".encode())
    keys = []
    for row in x.detach().cpu().contiguous().numpy().reshape(len(x), -1):
        h = base.copy()
        h.update(row.tobytes())
        keys.append(h.digest()[:20])
    return keys


def cache_cap_mb() -> float:
    """The feature cache's size cap in megabytes: ``$RETAIN_CACHE_MAX_MB``, else 256."""
    value = os.environ.get("RETAIN_CACHE_MAX_MB")
    if value is None:
        return MAX_MB
    try:
        mb = float(value)
    except ValueError:
        mb = math.nan
    if not (math.isfinite(mb) and mb > 0):
        raise ValueError(f"RETAIN_CACHE_MAX_MB={value!r}: give the feature cache's size cap in megabytes "
                         "(a positive number)")
    return mb


@functools.cache
def _shape(text: str) -> tuple[int, ...]:
    return tuple(json.loads(text))


def _checksum(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:16]


class LazyEncoder:
    """An encoder built only when a feature is not in the cache (loading a large model costs seconds)."""

    def __init__(self, backbone_id: str, build: Callable[[], nn.Module]) -> None:
        self.backbone_id, self._build = backbone_id, build
        self._module: nn.Module | None = None

    def get(self) -> nn.Module:
        if self._module is None:
            self._module = self._build()
            if self._module.backbone_id != self.backbone_id:
                raise ValueError(f"encoder id {self._module.backbone_id!r} is not the promised {self.backbone_id!r}")
        return self._module


def _resolve(encoder: nn.Module | LazyEncoder) -> nn.Module:
    return encoder.get() if isinstance(encoder, LazyEncoder) else encoder


@dataclass
class FeatureCache:
    """Cached frozen-backbone features in the folder ``root`` (see the module docstring).

    ``hits`` counts the calls of :meth:`features` that found every row, ``misses`` those that
    encoded some; ``max_mb`` caps the file (default: ``$RETAIN_CACHE_MAX_MB`` or 256); ``writes``
    off, the cache is only read (all but one of several processes sharing it, or a service not
    asked to keep its requests' features).
    """

    root: Path
    hits: int = 0
    misses: int = 0
    writes: bool = True
    max_mb: float | None = None
    _warned: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.max_mb = cache_cap_mb() if self.max_mb is None else self.max_mb
        if not self.max_mb > 0:
            raise ValueError(f"max_mb={self.max_mb}: the feature cache's size cap must be positive (megabytes)")

    @property
    def file(self) -> Path:
        return self.root / FILE

    def key(self, backbone_id: str, x: Tensor) -> list[bytes]:
        """The key of each row of ``x`` (:func:`row_keys`)."""
        return row_keys(backbone_id, x)

    def size(self) -> int:
        """Bytes the cache takes on disk."""
        return sum(p.stat().st_size for p in self.root.glob(f"{FILE}*") if p.is_file())

    def _warn(self, message: str) -> None:
        if message not in self._warned:  # once per cache and problem, not once per batch
            self._warned.add(message)
            warnings.warn(message, stacklevel=4)

    @contextmanager
    def _connect(self, write: bool) -> Iterator[sqlite3.Connection]:
        """A connection (one per call: threads never share one); ``write``: inside one transaction
        that holds the write lock from its start (no two writers upgrade a read lock and deadlock)."""
        new = not self.file.exists()
        con = sqlite3.connect(self.file, timeout=60, isolation_level=None)
        try:
            if write:
                con.execute("PRAGMA synchronous = OFF")  # no fsync: a power cut may corrupt rows, which checksums catch
                if new:  # in a new file: evictions shrink it
                    con.execute("PRAGMA auto_vacuum = INCREMENTAL")
                con.execute("BEGIN IMMEDIATE")
                con.execute("CREATE TABLE IF NOT EXISTS features (key BLOB PRIMARY KEY, shape TEXT, dtype TEXT, "
                            "data BLOB, checksum BLOB, used REAL)")
                con.execute("CREATE INDEX IF NOT EXISTS features_used ON features (used)")
            yield con
            if write:
                con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        finally:
            con.close()

    def _corrupt(self, err: sqlite3.DatabaseError) -> None:
        """A cache file that is not a readable database: reported and removed, so it starts afresh."""
        warnings.warn(f"feature cache {self.file} is corrupt ({err}); starting it afresh", stacklevel=4)
        for path in (self.file, self.file.with_name(FILE + "-journal")):
            path.unlink(missing_ok=True)

    def load(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached features of those ``keys`` that are cached; a row whose features do not match
        their checksum is reported, dropped and left out."""
        if not keys or not self.file.is_file():
            return {}
        found, bad, unique = {}, [], list(dict.fromkeys(keys))
        try:
            with self._connect(write=False) as con:
                for start in range(0, len(unique), CHUNK):
                    part = unique[start:start + CHUNK]
                    for key, shape, dtype, data, checksum in con.execute(
                            "SELECT key, shape, dtype, data, checksum FROM features WHERE key IN "
                            f"({','.join('?' * len(part))})", part):
                        if _checksum(data) != checksum:
                            bad.append(key)
                            continue
                        found[bytes(key)] = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(_shape(shape))
        except sqlite3.OperationalError as err:
            if "no such table" not in str(err):  # else a file being made: nothing cached yet
                self._warn(f"feature cache {self.file} cannot be read ({err}); encoding instead")
            return {}
        except sqlite3.DatabaseError as err:
            self._corrupt(err)
            return {}
        if bad:
            warnings.warn(f"feature cache {self.file}: {len(bad)} rows do not match their checksum (corrupt); "
                          "recomputing them", stacklevel=3)
            self.store(bad, None)
        return found

    def store(self, keys: list[bytes], feats: Tensor | None, used: Sequence[bytes] = ()) -> None:
        """Keep ``feats`` (one row per key; None: drop those keys) and mark the ``used`` keys as just
        used; then evict the rows used longest ago while the file is over its cap. Does nothing
        unless ``writes``."""
        if not self.writes or not (keys or used):
            return
        now = time.time()
        fresh = not self.file.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._connect(write=True) as con:
                if feats is None:
                    con.executemany("DELETE FROM features WHERE key = ?", [(k,) for k in keys])
                else:
                    rows = feats.detach().cpu().contiguous().numpy()
                    shape, dtype = json.dumps(list(rows.shape[1:])), rows.dtype.str
                    con.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?)",
                                    [(k, shape, dtype, (data := row.tobytes()), _checksum(data), now)
                                     for k, row in dict(zip(keys, rows, strict=True)).items()])
                unique = list(dict.fromkeys(used))
                for start in range(0, len(unique), CHUNK):
                    part = unique[start:start + CHUNK]
                    con.execute(f"UPDATE features SET used = ? WHERE key IN ({','.join('?' * len(part))})",
                                [now, *part])
                self._evict(con)
        except sqlite3.OperationalError as err:  # a full or read-only disk, a lock held too long
            self._warn(f"feature cache {self.file} cannot be written ({err}); features are not kept")
            return
        except sqlite3.DatabaseError as err:
            self._corrupt(err)
            return
        if fresh:  # files of the cache's earlier layout (one file per batch) would stay forever
            for path in self.root.iterdir():
                if _OLD_FILES.fullmatch(path.name):
                    path.unlink(missing_ok=True)

    def _evict(self, con: sqlite3.Connection) -> None:
        """While the file is over the cap, drop the rows used longest ago, down to 90% of it (so that
        the next writes do not evict again at once), shrinking the file as they go."""
        page: int = con.execute("PRAGMA page_size").fetchone()[0]

        def size() -> int:
            con.execute("PRAGMA incremental_vacuum").fetchall()  # one page a step: run it through
            pages: int = con.execute("PRAGMA page_count").fetchone()[0]
            return page * pages

        assert self.max_mb is not None  # set by __post_init__
        cap = self.max_mb * 2**20
        if page * con.execute("PRAGMA page_count").fetchone()[0] <= cap:
            return
        now = size()
        while now > 0.9 * cap:
            count = con.execute("SELECT COUNT(*) FROM features").fetchone()[0]
            if count == 0:
                break
            drop = max(1, math.ceil(count * (now - 0.9 * cap) / now))
            con.execute("DELETE FROM features WHERE key IN (SELECT key FROM features ORDER BY used LIMIT ?)", (drop,))
            now = size()

    def features(self, encoder: nn.Module | LazyEncoder, x: Tensor, batch_size: int = 128, desc: str = "features",
                 progress: bool = True, compute: Encode | None = None,
                 agree: Callable[[bool], bool] = lambda hit: hit) -> Tensor:
        """``encoder(x)`` in evaluation mode, its rows read from the cache where they were computed
        before and the others encoded (then kept).

        ``agree``: whether every process sharing the work found the same (processes that compute
        together must all compute the same rows). When no process has any row, ``compute`` (default
        :func:`encode`; several processes: each its share) encodes them all; when some rows are
        cached, each process encodes the rows it lacks on its own, with :func:`encode`.
        """
        keys = self.key(str(encoder.backbone_id), x)  # a str: nn.Module cannot declare the attribute
        if not keys:
            return (compute or encode)(_resolve(encoder), x, batch_size, desc, progress)
        found = self.load(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if agree(not missing):
            self.hits += 1
            self.store([], None, used=keys)
            return torch.from_numpy(np.stack([found[k] for k in keys]))
        self.misses += 1
        if agree(len(missing) == len(keys)):
            feats = (compute or encode)(_resolve(encoder), x, batch_size, desc, progress)
        else:
            index = torch.tensor(missing)
            part = encode(_resolve(encoder), x[index], batch_size, desc, progress)
            known = [i for i, k in enumerate(keys) if k in found]
            feats = torch.empty((len(keys), *part.shape[1:]), dtype=part.dtype)
            feats[index] = part
            if known:
                feats[torch.tensor(known)] = torch.from_numpy(np.stack([found[keys[i]] for i in known])).to(part.dtype)
        self.store([keys[i] for i in missing], feats[torch.tensor(missing)], used=[k for k in keys if k in found])
        return feats


def encode(encoder: nn.Module, x: Tensor, batch_size: int = 128, desc: str = "features",
           progress: bool = True) -> Tensor:
    """Run ``encoder`` over ``x`` in batches (evaluation mode), with a progress bar.

    Token inputs are sorted by length and batched by a token budget, so each batch carries
    little padding; an image CNN on the CPU takes fewer rows a batch (:func:`encoder_batches`).
    """
    with evaluating(encoder):
        return in_batches(encoder, encoder, x, batch_size, module_device(encoder), desc=desc, progress=progress)


def encode_stream(stream: Stream, encoder: nn.Module | LazyEncoder, cache: FeatureCache | None, batch_size: int = 128,
                  progress: bool = True, compute: Encode | None = None,
                  agree: Callable[[bool], bool] = lambda hit: hit) -> Stream:
    """The same stream with every input replaced by its (cached) frozen-backbone features,
    computed by ``compute`` (default :func:`encode`; several processes: each its share)."""
    def run(x: Tensor, what: str) -> Tensor:
        if cache is None:
            return (compute or encode)(_resolve(encoder), x, batch_size, what, progress)
        return cache.features(encoder, x, batch_size, what, progress, compute, agree)

    experiences = [
        replace(e, x_train=run(e.x_train, f"exp {e.id} train"), x_test=run(e.x_test, f"exp {e.id} test"))
        for e in stream
    ]
    return replace(stream, experiences=experiences,
                   metadata=stream.metadata | {"backbone": encoder.backbone_id})
