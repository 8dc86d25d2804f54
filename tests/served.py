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
