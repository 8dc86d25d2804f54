"""retain serve for its operator: log lines, readiness after a warm-up, metrics that survive a restart."""

import csv
import json
import logging
import random
import re
import time

import yaml
from fastapi.testclient import TestClient

from retain.cli import main
from retain.config import ServiceConfig
from retain.loop import Project
from retain.service.app import create_app

from .conftest import loop_store
from .served import TOKEN, WRITE, Served
from .test_service import client, ready, rows_of


def metric(text, name):
    """The value of the sample ``name`` (with its labels, if any) in Prometheus text."""
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def predicted_and_labelled(api, batches, n=40, prefix="p"):
    """Predictions of ``n`` test rows under ids, then their true labels: the prequential record."""
    test = rows_of(batches / "00" / "test.csv", n)
    answer = api.post("/predict", json={"inputs": [{"features": x, "id": f"{prefix}{i}"}
                                                   for i, (x, _) in enumerate(test)]}).json()
    # the first five labels are flipped: some predictions are wrong, so accuracy is not 1
    labels = [y if i >= 5 else ("1" if p["label"] == "0" else "0")
              for i, ((_, y), p) in enumerate(zip(test, answer["predictions"], strict=True))]
    api.post("/feedback", json={"rows": [{"id": f"{prefix}{i}", "label": y} for i, y in enumerate(labels)]},
             headers=WRITE)


def test_ready_is_503_until_a_warm_up_prediction_has_run(tmp_path, batches):
    app = create_app(loop_store(tmp_path, batches), ServiceConfig(poll=0.05), token=TOKEN)
    served = app.state.service.served
    cold = TestClient(app).get("/ready")  # no lifespan: nothing has warmed the model up
    assert cold.status_code == 503 and cold.json() == {"status": "warming up", "version": 1}
    assert served.warmed == 0
    with TestClient(app) as api:
        assert ready(api) == {"status": "ready", "version": 1}
        assert served.warmed == 1


def test_the_warm_up_loads_a_frozen_encoder_before_ready(tmp_path, capsys):
    from retain.build import frozen_backbone

    rng = random.Random(0)
    words = {"sports": ["goal", "match", "team", "score", "coach"], "weather": ["rain", "sun", "cloud", "wind"]}
    with open(tmp_path / "text.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for i in range(60):
            label = ["sports", "weather"][i % 2]
            out.writerow([" ".join(rng.choice(words[label]) for _ in range(8)), label])
    (tmp_path / "text.yaml").write_text(yaml.safe_dump({
        "model": {"backbone": "tiny_text", "hidden": [16], "feature_cache": None}, "training": {"epochs": 3},
        "strategies": ["finetune"]}))
    assert main(["init", str(tmp_path / "text.yaml"), "--data", str(tmp_path / "text.csv"),
                 "--store", str(tmp_path / "store"), "--json"]) == 0
    gate = json.loads(capsys.readouterr().out)["gate"]
    frozen_backbone.cache_clear()  # as in a fresh process: no encoder built yet
    app = create_app(tmp_path / "store", ServiceConfig(poll=0.05), token=TOKEN)
    assert frozen_backbone.cache_info().currsize == 0
    with TestClient(app) as api:
        assert ready(api)["status"] == "ready"
        assert frozen_backbone.cache_info().currsize == 1  # the warm-up built the encoder
        answer = api.post("/predict", json={"inputs": [{"text": "goal match team score"}]})
        assert answer.json()["version"] == 1 and answer.json()["predictions"][0]["label"] in words
        # the gate set init's repeated rows aside: the metrics count them
        assert metric(api.get("/metrics").text, "retain_quarantined_rows") == int(
            re.match(r"quarantined (\d+) rows", gate).group(1))


def test_metrics_are_restored_from_the_store_after_a_restart(tmp_path, batches):
    store = loop_store(tmp_path, batches, promotion={"max_drop": 0.5})
    with client(store, min_rows=10_000, new_class_rows=10_000) as api:
        predicted_and_labelled(api, batches)
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 80)]
        api.post("/feedback", json={"rows": rows}, headers=WRITE)
        result = api.post("/update", headers=WRITE).json()
        assert result["promoted"]
        set_aside = re.match(r"quarantined (\d+) rows", result["gate"])  # what the gate kept for review
        text = api.get("/metrics").text
        assert 0 < metric(text, "retain_update_seconds") < 60
        assert metric(text, "retain_quarantined_rows") == (int(set_aside.group(1)) if set_aside else 0)
    with client(store) as api:  # a new process on the same store
        state = api.get("/state").json()
        assert state["labelled"] == 40 and 0.5 < state["correct"] / state["labelled"] < 1
        text = api.get("/metrics").text
        assert metric(text, "retain_prequential_accuracy") == state["correct"] / state["labelled"]
        assert metric(text, "retain_prequential_labelled_total") == 40
        assert metric(text, "retain_prequential_correct_total") == state["correct"]
        recorded = next(v for v in state["versions"] if v["version"] == 2)["accuracy"]
        assert len(recorded) == 2
        for batch, value in recorded.items():
            assert metric(text, f'retain_held_out_accuracy{{batch="{batch}"}}') == value
        assert metric(text, "retain_quarantined_rows") == (int(set_aside.group(1)) if set_aside else 0)
        # labels after the restart add to the restored figures
        predicted_and_labelled(api, batches, n=10, prefix="q")
        text = api.get("/metrics").text
        assert metric(text, "retain_prequential_labelled_total") == 50
        state = api.get("/state").json()
        assert metric(text, "retain_prequential_accuracy") == state["correct"] / state["labelled"]
        # a rollback serves version 1: the gauge shows its batches only
        api.post("/rollback", headers=WRITE)
        text = api.get("/metrics").text
        assert [line.split("{")[1].split("}")[0] for line in text.splitlines()
                if line.startswith("retain_held_out_accuracy{")] == ['batch="batch-0000"']


def test_per_class_figures_are_those_of_retain_diff(tmp_path, batches):
    store = loop_store(tmp_path, batches, promotion={"max_drop": 0.5})
    with client(store, min_rows=10_000, new_class_rows=10_000) as api:
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 80)]
        api.post("/feedback", json={"rows": rows}, headers=WRITE)
        assert api.post("/update", headers=WRITE).json()["version"] == 2
        diff = Project(store).diff(1, 2)
        by_class = {key.removeprefix("class "): r for key, r in diff.items() if key.startswith("class ")}
        assert api.get("/state").json()["per_class"] == {k: r["2"] for k, r in by_class.items()}
        # served version 1 is judged on version 2's batch too, as diff judges it: its new classes count
        api.post("/rollback", headers=WRITE)
        assert api.get("/state").json()["per_class"] == {k: r["1"] for k, r in by_class.items()}
        assert set(by_class) > {y for _, y in rows_of(batches / "00" / "train.csv")}  # classes only batch 01 has


def test_the_accuracy_series_covers_the_last_span_of_feedback(tmp_path, batches):
    with client(loop_store(tmp_path, batches)) as api:
        predicted_and_labelled(api, batches, n=30, prefix="a")
        time.sleep(1.5)
        predicted_and_labelled(api, batches, n=30, prefix="b")
        every = api.get("/state").json()["prequential"]
        recent = api.get("/state", params={"span": 1.0}).json()["prequential"]
        last = every[-1]["at"]
        assert every[0]["at"] < last - 1 and recent[-1] == every[-1]
        assert all(p["at"] >= last - 1 for p in recent) and len(recent) == 30
        assert api.get("/state", params={"span": 0}).status_code == 422


def test_updates_swaps_and_lease_waits_are_logged(tmp_path, batches, caplog):
    store = loop_store(tmp_path, batches, promotion={"max_drop": 0.5})
    Project(store).store.intake.lease("updater", "gone-host:4242:dead", seconds=60)  # a process killed holding it
    caplog.set_level(logging.INFO, logger="retain.service")
    app = create_app(store, ServiceConfig(poll=0.05, min_rows=40, update_rows=40, new_class_rows=10_000,
                                          update_wait=3600), token=TOKEN, address="http://127.0.0.1:1234")
    with TestClient(app) as api:
        ready(api)
        deadline = time.time() + 10
        while "waiting for the updater lease" not in caplog.text and time.time() < deadline:
            time.sleep(0.05)
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 60)]
        api.post("/feedback", json={"rows": rows}, headers=WRITE)
        time.sleep(0.5)
        assert api.get("/ready").json()["version"] == 1  # no update while another holds the lease
        Project(store).store.intake.release("updater", "gone-host:4242:dead")
        while api.get("/ready").json()["version"] == 1 and time.time() < deadline + 60:
            time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "retain.service"]
    start = next(line for line in lines if line.startswith("serving "))
    assert str(store) in start and "classification store, version 1 promoted" in start
    assert "http://127.0.0.1:1234" in start
    assert any(line.startswith("ready: version 1 answered a warm-up input") for line in lines)
    wait = next(line for line in lines if line.startswith("waiting for the updater lease"))
    left = re.search(r"gone-host:4242:dead holds it until \d\d:\d\d:\d\d \(in (\d+) s\)", wait)
    assert left and 30 < int(left.group(1)) <= 60, wait
    assert any(line.startswith("took the updater lease from gone-host:4242:dead") for line in lines)
    update = next(line for line in lines if line.startswith("update ("))
    assert re.match(r"update \(60 rows queued\): 60 rows -> version 2 promoted: .+ \(\d+\.\d s\)$", update), update
    assert "serving version 2 (was 1)" in lines


def test_retain_serve_logs_its_start_and_each_request_with_access_log(tmp_path, batches):
    store = loop_store(tmp_path, batches)
    server = Served(store, "--access-log").wait()
    try:
        deadline = time.time() + 60
        while server.client.get("/ready").status_code == 503 and time.time() < deadline:
            time.sleep(0.1)
        server.client.post("/predict", json={"inputs": [{"features": [0.0] * 64}]})
    finally:
        server.stop()
    log = (store.parent / f"serve-{server.port}.log").read_text()
    assert re.search(r"INFO .*retain\.service: serving sqlite:///.*/store\.db \(classification store, version 1 "
                     rf"promoted\) at http://127\.0\.0\.1:{server.port} \(the dashboard at /\); updater on", log), log
    assert re.search(r"retain\.service\.access: GET /ready 200 \d+\.\d ms", log), log
    assert re.search(r"retain\.service\.access: POST /predict 200 \d+\.\d ms", log), log
    quiet = Served(store).wait()  # the access log is off by default
    try:
        quiet.client.get("/health")
    finally:
        quiet.stop()
    log = (store.parent / f"serve-{quiet.port}.log").read_text()
    assert "retain.service: serving" in log and "GET /health" not in log
