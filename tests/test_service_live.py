"""retain serve with its real clients: Schemathesis on the OpenAPI schema, a headless Chromium on
the dashboard, Prometheus scraping /metrics, and PostgreSQL under two worker processes."""

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from retain.config import ServiceConfig
from retain.service.app import create_app

from .conftest import loop_store
from .served import TOKEN, WRITE, Served, headless_chromium
from .test_service import rows_of

ARTEFACTS = Path(__file__).parent / "artefacts"  # screenshots kept for a look after the run


@pytest.fixture(scope="module")
def api_app(tmp_path_factory, batches):
    store = loop_store(tmp_path_factory.mktemp("fuzzed"), batches, promotion={"max_drop": 0.5})
    return create_app(store, ServiceConfig(poll=0.2, min_rows=10_000, new_class_rows=10_000), token=TOKEN)


def test_no_input_the_schema_allows_or_not_gets_a_server_error(api_app):
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=True)  # the same cases on every run
        def check(case):
            response = case.call(headers=WRITE)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        check()


def _until(check, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError("the page did not show it in time")


def long_named(batches, folder):
    """Batches 00 and 01 with each digit's label a long class name (as a real store's may be)."""
    for part in ("00", "01"):
        (folder / part).mkdir(parents=True)
        for split in ("train.csv", "test.csv"):
            lines = (batches / part / split).read_text().splitlines()
            label = lines[0].split(",").index("label")
            renamed = [",".join(f"digit {v}: a class name longer than any bar label would show" if i == label else v
                                for i, v in enumerate(line.split(","))) for line in lines[1:]]
            (folder / part / split).write_text("\n".join([lines[0], *renamed]) + "\n")
    return folder


def test_the_dashboard_shows_versions_and_the_chart_and_follows_a_promotion(tmp_path, batches):
    from selenium.webdriver.common.by import By

    from retain.loop import Project

    named = long_named(batches, tmp_path / "named")
    store = loop_store(tmp_path, named, promotion={"max_drop": 0.5})
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"min_rows": 10_000, "new_class_rows": 10_000, "poll": 0.1}))
    server = Served(store, "--config", str(config)).wait()
    browser = headless_chromium()
    try:
        test = rows_of(named / "00" / "test.csv", 60)
        server.client.post("/predict", json={"inputs": [{"features": x, "id": f"q{i}"}
                                                        for i, (x, _) in enumerate(test)]})
        server.client.post("/feedback", json={"rows": [{"id": f"q{i}", "label": y} for i, (_, y) in enumerate(test)]},
                           headers=WRITE)
        browser.get(server.url + "/")
        _until(lambda: browser.find_element(By.ID, "served").text == "version 1")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 1
        # the rows the served version did not learn: none yet, said in a row of the table
        assert _until(lambda: browser.find_element(By.CSS_SELECTOR, "#aside tbody").text.startswith("none"))
        assert _until(lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline circle"))  # the accuracy chart
        assert browser.find_element(By.ID, "labelled").text == "60"
        # an update through the API: the page shows version 2 without being reloaded
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(named / "01" / "train.csv", 80)]
        server.client.post("/feedback", json={"rows": rows}, headers=WRITE)
        assert server.client.post("/update", headers=WRITE).json()["promoted"]
        _until(lambda: browser.find_element(By.ID, "served").text == "version 2")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 2
        # the time axis spans the feedback (and what followed it), not the store's life: version 1's
        # promotion at init is before it, version 2's is drawn; the axes are labelled
        assert _until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#timeline line.event.promote")) == 1)
        texts = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#timeline text")]
        assert "time the feedback arrived (this browser's clock)" in texts and "accuracy, last 20 labelled" in texts
        assert len([t for t in texts if re.fullmatch(r"\d\d:\d\d(:\d\d)?( [AP]M)?", t)]) >= 2, texts
        # per class: whole names, and the figures of retain diff
        diff = Project(store).diff(1, 2)
        expected = {key.removeprefix("class "): f"{100 * r['2']:.1f}%" for key, r in diff.items()
                    if key.startswith("class ")}
        assert len(expected) >= 4

        def shown():
            rows = browser.find_elements(By.CSS_SELECTOR, "#classes .row")
            return {r.find_element(By.CLASS_NAME, "name").text: r.find_element(By.CLASS_NAME, "value").text
                    for r in rows}
        assert _until(lambda: shown() == expected)
        # roll back with the page's button, the token typed in: asked first, nothing changes on Cancel
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "rollback").click()
        dialog = browser.find_element(By.ID, "confirm")
        assert dialog.get_attribute("open") is not None and dialog.text.startswith("Roll back to version 1?")
        ARTEFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTEFACTS / "dashboard-confirm.png"))
        browser.find_element(By.ID, "confirm-cancel").click()
        assert dialog.get_attribute("open") is None
        time.sleep(0.5)
        assert server.client.get("/ready").json()["version"] == 2
        browser.find_element(By.ID, "rollback").click()
        browser.find_element(By.ID, "confirm-yes").click()
        _until(lambda: browser.find_element(By.ID, "served").text == "version 1")
        assert server.client.get("/ready").json()["version"] == 1
        assert _until(lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline line.event.rollback"))
        browser.save_screenshot(str(ARTEFACTS / "dashboard.png"))
        # promote by hand: asked too
        _until(lambda: browser.find_elements(By.CSS_SELECTOR, "#versions tbody button"))
        browser.find_element(By.CSS_SELECTOR, "#versions tbody button").click()
        assert dialog.text.startswith("Promote version 2 (promoted: ")
        browser.find_element(By.ID, "confirm-yes").click()
        _until(lambda: browser.find_element(By.ID, "served").text == "version 2")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()
        server.stop()


def test_prometheus_scrapes_the_service(tmp_path, batches):
    store = loop_store(tmp_path, batches, promotion={"max_drop": 0.5})
    server = Served(store).wait()
    folder = Path(tempfile.mkdtemp(prefix="retain-prom-"))
    prometheus = None
    try:
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "00" / "test.csv", 7)]
        assert server.client.post("/feedback", json={"rows": rows}, headers=WRITE).json()["accepted"] == 7
        server.client.post("/predict", json={"inputs": [{"features": rows[0]["input"]["features"]}]})
        text = server.client.get("/metrics").text
        (folder / "metrics.txt").write_text(text)
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        port = __import__("tests.served", fromlist=["free_port"]).free_port()
        (folder / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "retain", "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}]}))
        prometheus = subprocess.Popen(["prometheus", f"--config.file={folder / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={folder / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{port}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def query(expression):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expression}).json()
            except (httpx.TransportError, json.JSONDecodeError):
                return None
            result = answer.get("data", {}).get("result", [])
            return float(result[0]["value"][1]) if result else None

        assert _until(lambda: query("retain_serving_version"), timeout=60) == 1.0
        assert _until(lambda: query("retain_feedback_rows_total")) == 7.0
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(20)
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_postgresql_share_one_store_and_one_updater(tmp_path, batches, postgres):
    store = loop_store(tmp_path, batches, database=postgres.database(), promotion={"max_drop": 0.5})
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({"min_rows": 80, "update_rows": 80, "new_class_rows": 10_000, "poll": 0.2}))
    server = Served(store, "--config", str(config), "--workers", "2").wait()
    try:
        rows = [{"input": {"features": x}, "label": y} for x, y in rows_of(batches / "01" / "train.csv", 80)]
        # a new connection each: the workers take turns
        acked = sum(httpx.post(f"{server.url}/feedback", json={"rows": rows[i:i + 10]}, headers=WRITE
                               ).json()["accepted"] for i in range(0, 80, 10))
        assert acked == 80
        _until(lambda: all(httpx.get(f"{server.url}/ready").json().get("version") == 2 for _ in range(8)),
               timeout=90)
        versions = server.client.get("/versions").json()
        assert [v["version"] for v in versions] == [1, 2]  # one updater: one version for the batch
        state = server.client.get("/state").json()
        assert state["feedback"] == {"learned": 80}
        metrics = server.client.get("/metrics").text
        assert "retain_feedback_rows_total 80.0" in metrics  # summed over both workers
    finally:
        server.stop()
