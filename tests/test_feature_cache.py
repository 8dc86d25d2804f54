"""The feature cache: row by row, safe under concurrent use, within its size cap, written by serving only when asked."""

import base64
import io
import sqlite3
import threading

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from scipy.io import wavfile

from retain.cli import main
from retain.config import ServiceConfig
from retain.data.features import FILE, FeatureCache, cache_cap_mb
from retain.service.app import create_app


class Widen(torch.nn.Module):
    """A frozen 'backbone' that counts the rows it encodes: 8 inputs -> 100 features."""

    backbone_id = "widen"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("w", torch.randn(8, 100))
        self.rows = 0
        self.lock = threading.Lock()

    def forward(self, x):
        with self.lock:
            self.rows += len(x)
        return x @ self.w


def test_rows_encoded_one_by_one_are_read_back_as_a_batch_and_a_partial_batch_encodes_only_its_new_rows(tmp_path):
    cache, encoder, x = FeatureCache(tmp_path), Widen(), torch.rand(12, 8)
    for i in range(10):
        cache.features(encoder, x[i:i + 1], progress=False)
    assert encoder.rows == 10
    together = cache.features(encoder, x[:10], progress=False)
    assert encoder.rows == 10 and torch.allclose(together, x[:10] @ encoder.w, atol=1e-6)
    assert (cache.hits, cache.misses) == (1, 10)
    mixed = cache.features(encoder, x.flip(0), progress=False)  # 10 known rows (any order), 2 new ones
    assert encoder.rows == 12 and torch.allclose(mixed, x.flip(0) @ encoder.w, atol=1e-6)
    again = FeatureCache(tmp_path)  # another process, or a later run
    assert torch.equal(again.features(encoder, x, progress=False), cache.features(encoder, x, progress=False))
    assert encoder.rows == 12 and again.hits == 1
    other = Widen()
    other.backbone_id = "another"
    cache.features(other, x[:3], progress=False)
    assert other.rows == 3  # another backbone's features are its own


def test_identical_concurrent_encodes_never_fail(tmp_path):
    encoder, x = Widen(), torch.rand(4, 8)
    expected, errors = x @ encoder.w, []

    def requests():
        for _ in range(20):
            try:  # each request builds its cache as the service does
                assert torch.allclose(FeatureCache(tmp_path).features(encoder, x, progress=False), expected,
                                      atol=1e-6)
            except Exception as err:  # noqa: BLE001 - every failure is counted
                errors.append(repr(err))

    threads = [threading.Thread(target=requests) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and encoder.rows < 6 * 20 * 4  # encoded by the first ones, read by the others
    assert [p.name for p in tmp_path.iterdir()] == [FILE]  # no temporary file left behind


def test_the_cache_stays_under_its_cap_and_evicts_the_rows_used_longest_ago(tmp_path):
    cache, encoder = FeatureCache(tmp_path, max_mb=0.1), Widen()
    torch.manual_seed(1)
    first, batches = torch.rand(4, 8), [torch.rand(4, 8) for _ in range(150)]  # 600 rows of 400 bytes: 240 KB
    cache.features(encoder, first, progress=False)
    for i, x in enumerate(batches):
        cache.features(encoder, x, progress=False)
        if i % 10 == 0:
            cache.features(encoder, first, progress=False)  # kept in use: never the oldest
        assert cache.size() <= 0.1 * 2**20
    encoded = encoder.rows
    cache.features(encoder, first, progress=False)
    cache.features(encoder, batches[-1], progress=False)
    assert encoder.rows == encoded  # the rows used lately are still there
    cache.features(encoder, batches[0], progress=False)
    assert encoder.rows == encoded + 4  # the oldest were evicted


def test_the_cap_is_read_from_the_environment_and_a_bad_one_is_named(tmp_path, monkeypatch):
    assert cache_cap_mb() == 256
    monkeypatch.setenv("RETAIN_CACHE_MAX_MB", "0.5")
    assert FeatureCache(tmp_path).max_mb == 0.5
    monkeypatch.setenv("RETAIN_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="RETAIN_CACHE_MAX_MB='lots': give the feature cache's size cap"):
        FeatureCache(tmp_path)


def test_a_read_only_cache_writes_nothing(tmp_path):
    encoder, x = Widen(), torch.rand(3, 8)
    reader = FeatureCache(tmp_path, writes=False)
    reader.features(encoder, x, progress=False)
    assert not (tmp_path / FILE).exists()
    FeatureCache(tmp_path).features(encoder, x, progress=False)
    reader.features(encoder, x, progress=False)
    assert encoder.rows == 6 and reader.hits == 1


def test_a_corrupt_row_or_file_is_reported_and_recomputed(tmp_path):
    cache, encoder, x = FeatureCache(tmp_path), Widen(), torch.rand(5, 8)
    first = cache.features(encoder, x, progress=False)
    with sqlite3.connect(tmp_path / FILE) as con:  # one stored value changed: its checksum no longer matches
        key, data = con.execute("SELECT key, data FROM features LIMIT 1").fetchone()
        con.execute("UPDATE features SET data = ? WHERE key = ?", (b"\0\0\x80\x7f" + data[4:], key))
    with pytest.warns(UserWarning, match="1 rows do not match their checksum"):
        assert torch.allclose(cache.features(encoder, x, progress=False), first, atol=1e-6)
    assert encoder.rows == 6  # only that row was encoded again
    (tmp_path / FILE).write_bytes(b"not a database" * 100)
    with pytest.warns(UserWarning, match="is corrupt"):
        assert torch.allclose(cache.features(encoder, x, progress=False), first, atol=1e-6)
    assert cache.features(encoder, x, progress=False).shape == (5, 100) and encoder.rows == 11


def audio_store(folder):
    """A store of 1 s WAV clips (a low and a high tone) on frozen log-mel features, cached in ``folder / "cache"``."""
    rng = np.random.default_rng(0)
    for label, tone in (("low", 200), ("high", 3000)):
        (folder / "clips" / label).mkdir(parents=True)
        for i in range(4):
            wave = 0.5 * np.sin(2 * np.pi * tone * (1 + 0.05 * i) * np.arange(16_000) / 16_000)
            wavfile.write(folder / "clips" / label / f"{i}.wav", 16_000,
                          (wave + 0.01 * rng.standard_normal(16_000)).astype(np.float32))
    (folder / "cfg.yaml").write_text(yaml.safe_dump({
        "model": {"backbone": "logmel", "hidden": [], "feature_cache": str(folder / "cache")},
        "training": {"epochs": 1, "threads": 1}, "strategies": ["finetune"]}))
    assert main(["init", str(folder / "cfg.yaml"), "--data", str(folder / "clips"), "--store", str(folder / "store"),
                 "--json"]) == 0
    return folder / "store"


def test_serving_fills_the_cache_only_when_asked(tmp_path):
    from retain.loop import Project
    from retain.service.metrics import ServiceMetrics
    from retain.service.schemas import PredictRequest
    from retain.service.served import Served

    store = audio_store(tmp_path)

    def cached():
        with sqlite3.connect(tmp_path / "cache" / FILE) as con:
            return con.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    assert cached() == 8  # training keeps its features
    clips = []
    for i in range(5):
        out = io.BytesIO()
        wavfile.write(out, 16_000, (0.3 * np.sin(np.arange(16_000) * (0.1 + i / 50))).astype(np.float32))
        clips.append({"audio": base64.b64encode(out.getvalue()).decode()})
    with TestClient(create_app(store)) as api:
        assert api.post("/predict", json={"inputs": clips}).status_code == 200
    assert cached() == 8
    served = Served(Project(store), ServiceMetrics(), ServiceConfig(cache_features=True))
    served.predict(PredictRequest.model_validate({"inputs": clips}))
    assert cached() == 8 + 5
