"""retain serve, in process (httpx through FastAPI's TestClient): every endpoint and bad input."""

import base64
import io
import json
import time

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from retain.cli import main
from retain.config import ServiceConfig
from retain.service.app import create_app

from .conftest import loop_store
from .served import TOKEN, WRITE


def rows_of(path, n=None):
    """(features, label) of a CSV batch."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    label = header.index("label")
    out = []
    for line in lines[1:n and n + 1]:
        values = line.split(",")
        out.append(([float(v) for i, v in enumerate(values) if i != label], values[label]))
    return out


@pytest.fixture
def store(tmp_path, batches):
    return loop_store(tmp_path, batches)


def client(store, **settings):
    app = create_app(store, ServiceConfig(**({"poll": 0.05, "update_wait": 3600} | settings)), token=TOKEN)
    return TestClient(app)


def ready(api, timeout=30.0):
    """/ready's answer once it is 200 (the warm-up prediction runs in the background)."""
    deadline = time.time() + timeout
    while (answer := api.get("/ready")).status_code == 503 and time.time() < deadline:
        time.sleep(0.05)
    return answer.json()


def test_predict_feedback_update_and_a_new_class_promoted(store, batches):
    with client(store, min_rows=10, update_rows=10_000, new_class_rows=5) as api:
        assert api.get("/health").json() == {"status": "alive"}
        assert ready(api) == {"status": "ready", "version": 1}
        test = rows_of(batches / "00" / "test.csv", 20)
        answer = api.post("/predict", json={"inputs": [{"features": x, "id": f"p{i}"} for i, (x, _) in
                                                       enumerate(test)], "top_k": 2}).json()
        assert answer["version"] == 1 and len(answer["predictions"]) == 20
        assert all(len(p["top"]) == 2 and p["top"][0]["label"] == p["label"] for p in answer["predictions"])
        right = sum(p["label"] == y for p, (_, y) in zip(answer["predictions"], test, strict=True))
        assert right >= 18
        # labels for those predictions, by id: prequential accuracy
        acked = api.post("/feedback", json={"rows": [{"id": f"p{i}", "label": y} for i, (_, y) in enumerate(test)]},
                         headers=WRITE).json()
        assert acked["accepted"] == 20 and acked["new_classes"] == []
        metrics = api.get("/metrics").text
        assert "retain_prequential_labelled_total 20.0" in metrics
        assert f"retain_prequential_accuracy {right / 20}" in metrics
        assert "retain_serving_version 1.0" in metrics
        # a new class arrives as feedback: the updater learns it and promotes a version that predicts it
        new = rows_of(batches / "01" / "train.csv")
        twos = [(x, y) for x, y in new if y == "2"][:30]
        start = time.time()
        acked = api.post("/feedback", json={"rows": [{"input": {"features": x}, "label": y} for x, y in twos]},
                         headers=WRITE).json()
        assert acked["new_classes"] == ["2"]
        while api.get("/ready").json()["version"] == 1 and time.time() - start < 60:
            time.sleep(0.1)
        assert api.get("/ready").json()["version"] == 2
        probe = [x for x, y in rows_of(batches / "01" / "test.csv") if y == "2"][:10]
        labels = [p["label"] for p in api.post("/predict", json={"inputs": [{"features": x} for x in probe]}
                                               ).json()["predictions"]]
        assert labels.count("2") >= 8
        versions = api.get("/versions").json()
        assert [(v["version"], v["decision"]) for v in versions] == [(1, "promoted"), (2, "promoted")]
        state = api.get("/state").json()
        assert state["served"] == 2 and state["feedback"] == {"learned": 50} and state["queue"] == 0
        assert state["labelled"] == 20 and "2" in state["per_class"]
        # rollback and promote by hand
        assert api.post("/rollback", headers=WRITE).json() == {"promoted": 1}
        assert api.get("/ready").json()["version"] == 1
        assert api.post("/promote/2", headers=WRITE).json() == {"promoted": 2}
        assert api.post("/update", headers=WRITE).json()["reason"] == "no feedback is queued"
        metrics = api.get("/metrics").text
        assert 'retain_updates_total{outcome="promoted"} 1.0' in metrics
        assert 'retain_requests_total{endpoint="/predict",status="200"} 2.0' in metrics


def test_writes_need_the_token_and_reads_can_be_closed(store):
    with client(store) as api:
        row = {"rows": [{"input": {"features": [0.0] * 64}, "label": "0"}]}
        assert api.post("/feedback", json=row).status_code == 401
        assert api.post("/feedback", json=row, headers={"Authorization": "Bearer wrong"}).status_code == 403
        for path in ("/update", "/rollback", "/promote/1"):
            assert api.post(path).status_code == 401
        assert api.get("/versions").status_code == 200
    with client(store, open_reads=False) as api:
        assert api.get("/versions").status_code == 401 and api.get("/versions", headers=WRITE).status_code == 200
        assert api.post("/predict", json={"inputs": [{"features": [0.0] * 64}]}).status_code == 401
        assert api.get("/health").status_code == 200  # liveness stays open
    app = create_app(store, ServiceConfig(), token=None)
    with TestClient(app) as api:
        answer = api.post("/feedback", json=row, headers=WRITE)
        assert answer.status_code == 403 and "no token is configured" in answer.json()["detail"]


@pytest.mark.parametrize("body, status, field", [
    ({"inputs": []}, 422, ["body", "inputs"]),
    ({"inputs": [{"features": [1.0, 2.0]}]}, 422, ["body", "inputs", 0, "features"]),
    ({"inputs": [{"text": "hello"}]}, 422, ["body", "inputs", 0, "text"]),
    ({"inputs": [{"features": [1.0] * 64, "text": "x"}]}, 422, ["body", "inputs", 0]),
    ({"inputs": [{"image": "not base64!"}]}, 422, ["body", "inputs", 0, "image"]),
    ({"inputs": [{"features": [1.0] * 64}], "top_k": 0}, 422, ["body", "top_k"]),
    ({"inputs": [{"features": [1.0] * 64}], "extra": 1}, 422, ["body", "extra"]),
    ({"inputs": [{"features": ["a"] * 64}]}, 422, ["body", "inputs", 0, "features", 0]),
])
def test_bad_predictions_are_4xx_naming_the_field(store, body, status, field):
    with client(store) as api:
        answer = api.post("/predict", json=body)
        assert answer.status_code == status
        assert any(d["loc"][:len(field)] == field for d in answer.json()["detail"]), answer.json()


def test_bad_feedback_is_refused_whole_and_nothing_is_kept(store):
    with client(store) as api:
        good = {"input": {"features": [0.0] * 64}, "label": "0"}
        for rows, status in (([good, {"label": "1"}], 422), ([good, {"id": "never-made", "label": "1"}], 404),
                             ([good, {"input": {"features": [0.0] * 3}, "label": "1"}], 422),
                             ([good | {"label": ""}], 422)):
            assert api.post("/feedback", json={"rows": rows}, headers=WRITE).status_code == status
        assert api.get("/state").json()["feedback"] == {}
        big = {"inputs": [{"features": [0.0] * 64}] * 1025}
        assert api.post("/predict", json=big).status_code == 422
        assert api.post("/predict", content=b"x" * (9 * 2**20), headers={"content-type": "application/json"}
                        ).status_code == 413
        assert api.post("/predict", content=b"{not json", headers={"content-type": "application/json"}
                        ).status_code == 422
        api.post("/predict", json={"inputs": [{"features": [0.0] * 64, "id": "once"}]})
        again = api.post("/predict", json={"inputs": [{"features": [0.0] * 64, "id": "once"}]})
        assert again.status_code == 409 and "once" in again.json()["detail"][0]["msg"]
        assert api.post("/promote/9", headers=WRITE).status_code == 404
        assert api.post(f"/promote/{2**63}", headers=WRITE).status_code == 422  # found by Schemathesis: was a 500
        # one label a prediction, given by its id or by its input, not both
        both = {"id": "once", "input": {"features": [0.0] * 64}, "label": "0"}
        assert api.post("/feedback", json={"rows": [both]}, headers=WRITE).status_code == 422
        assert api.post("/feedback", json={"rows": [{"id": "once", "label": "0"}] * 2}, headers=WRITE
                        ).status_code == 409
        assert api.post("/feedback", json={"rows": [{"id": "once", "label": "0"}]}, headers=WRITE).status_code == 200
        again = api.post("/feedback", json={"rows": [{"id": "once", "label": "1"}]}, headers=WRITE)
        assert again.status_code == 409 and "labelled already" in again.json()["detail"][0]["msg"]
        assert api.get("/state").json()["labelled"] == 1
        assert api.post("/rollback", headers=WRITE).status_code == 409  # version 1 has no parent


def test_the_dashboard_and_openapi_are_served(store):
    with client(store) as api:
        page = api.get("/")
        assert page.status_code == 200 and "/static/dashboard.js" in page.text
        assert api.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
        assert api.get("/static/nothing.js").status_code == 404
        schema = api.get("/openapi.json").json()
        assert {"/predict", "/feedback", "/update", "/versions", "/promote/{version}", "/rollback", "/health",
                "/ready", "/metrics"} <= set(schema["paths"])


def test_images_are_read_like_the_training_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "first"
    for label, shade in (("dark", 40), ("light", 215)):
        (folder / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.clip(rng.normal(shade, 20, (8, 8)), 0, 255).astype(np.uint8)).save(
                folder / label / f"{i}.png")
    cfg = tmp_path / "images.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hidden": [16]}, "training": {"epochs": 20, "lr": 0.1},
                                   "strategies": ["finetune"]}))
    assert main(["init", str(cfg), "--data", str(folder), "--store", str(tmp_path / "store"), "--json"]) == 0

    def png(shade, size):
        out = io.BytesIO()
        Image.fromarray(np.full((size, size), shade, np.uint8)).save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    with client(tmp_path / "store") as api:
        answer = api.post("/predict", json={"inputs": [{"image": png(30, 8)}, {"image": png(225, 32)}]})
        assert [p["label"] for p in answer.json()["predictions"]] == ["dark", "light"]  # any size is resized
        bad = api.post("/predict", json={"inputs": [{"image": base64.b64encode(b"not a png").decode()}]})
        assert bad.status_code == 422 and "not a readable image" in json.dumps(bad.json())


@pytest.mark.parametrize("point", ["in-update", "in-promote"])
def test_a_serve_process_killed_in_an_update_keeps_every_acknowledged_row_and_its_promoted_version(
        store, batches, point):
    from .served import killed_in_an_update

    rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 60)]
    again = killed_in_an_update(store, rows, point)
    try:
        assert ready(again.client) == {"status": "ready", "version": 1}
        state = again.client.get("/state").json()
        assert state["feedback"] == {"queued": 60} and [v["version"] for v in state["versions"]] == [1]
        result = again.client.post("/update", headers=WRITE).json()
        assert result["promoted"] and result["rows"] == 60
        assert again.client.get("/ready").json()["version"] == result["version"]
        assert again.client.get("/state").json()["feedback"] == {"learned": 60}
    finally:
        again.stop()


def test_labelled_predictions_going_wrong_raise_a_drift_alarm_and_an_update(store, batches):
    with client(store, min_rows=10, update_rows=10_000, update_wait=3600, new_class_rows=10_000) as api:
        test = rows_of(batches / "00" / "test.csv")
        inputs = [{"features": x, "id": f"d{i}"} for i, (x, _) in enumerate(test)]
        predicted = [p["label"] for p in api.post("/predict", json={"inputs": inputs}).json()["predictions"]]
        right = [{"id": f"d{i}", "label": label} for i, label in enumerate(predicted[:40])]
        # then the world changes: what the model says is now always wrong
        wrong = [{"id": f"d{i}", "label": "0" if label == "1" else "1"} for i, label in enumerate(predicted)][40:]
        api.post("/feedback", json={"rows": right}, headers=WRITE)
        assert 'retain_drift_alarms_total 0.0' in api.get("/metrics").text
        api.post("/feedback", json={"rows": wrong}, headers=WRITE)
        alarms = [line for line in api.get("/metrics").text.splitlines()
                  if line.startswith("retain_drift_alarms_total")]
        assert float(alarms[0].split()[1]) >= 1
        deadline = time.time() + 60
        while api.get("/state").json()["last_update"] is None and time.time() < deadline:
            time.sleep(0.1)
        assert api.get("/state").json()["last_update"]["trigger"] == "drift"
        assert any(e["kind"] == "drift" for e in api.get("/state").json()["events"])
