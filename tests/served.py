"""A real ``retain serve`` process for the tests: started on a free loopback port, waited for,
killed at the end."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TOKEN = "s3cret-token"
WRITE = {"Authorization": f"Bearer {TOKEN}"}
HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``retain serve STORE`` (through tests/fault_serve.py when ``fault`` is given)."""

    def __init__(self, store: Path, *args: str, fault: str = "none", env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, str(HERE / "fault_serve.py"), fault, "retain", "serve", str(store),
                   "--port", str(self.port), *args]
        self.log = open(store.parent / f"serve-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env=os.environ | {"RETAIN_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1"} | (env or {}))
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait(self, timeout: float = 90) -> Served:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"retain serve exited with {self.process.returncode}: "
                                   f"{Path(self.log.name).read_text()[-2000:]}")
            try:
                if self.client.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"retain serve did not answer in {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        self.log.close()


def killed_in_an_update(store: Path, rows: list[dict], fault: str) -> Served:
    """Send ``rows`` as feedback to a ``retain serve`` that kills itself (SIGKILL) at ``fault`` when
    ``POST /update`` runs, then start the store's service again: that one, once it answers."""
    import pytest
    import yaml

    config = store.parent / "service.yaml"
    config.write_text(yaml.safe_dump({"min_rows": 10_000, "new_class_rows": 10_000, "poll": 0.1}))
    server = Served(store, "--config", str(config), fault=fault).wait()
    try:
        acked = sum(server.client.post("/feedback", json={"rows": rows[i:i + 20]},
                                       headers=WRITE).json()["accepted"]
                    for i in range(0, len(rows), 20))
        assert acked == len(rows)
        with pytest.raises(Exception):  # noqa: B017 - the process dies under the request: any transport error
            server.client.post("/update", headers=WRITE)
        assert server.process.wait(30) == -9
    finally:
        server.stop()
    return Served(store, "--config", str(config)).wait()


def headless_chromium(width: int = 1200, height: int = 1400):
    """Debian's Chromium, headless, driven by its chromedriver through selenium (console logs kept)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as Driver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Driver(shutil.which("chromedriver")), options=options)
