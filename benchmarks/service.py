"""retain serve under a bounded load on loopback, against a bare FastAPI endpoint calling the same
torch model (the floor), in the same run.

Rows (``--out`` JSON):
- ``predict``: open-loop requests (one input each) at a fixed rate for ``--seconds``, to the service
  and to the floor: p50/p99 latency, errors, achieved rate. Fashion-MNIST MLP at 200/s, MiniLM text
  (frozen, SLDA) at 50/s.
- ``feedback``: durable ingest in batches of 500 rows (rows/s), and single-row acknowledgements at
  50/s (p99).
- ``new_class``: from the first feedback row of a class never seen to a promoted version that
  predicts it.
- ``replay``: the fortunes-language stream through the service (predict every training row, then
  send its label by the prediction's id; the updater learns on its own), then the accuracy on every
  batch's test rows against the same strategy fitted offline batch by batch. A dashboard
  screenshot of that run is written next to the JSON (``service_dashboard.png``).

    python benchmarks/service.py --out benchmarks/results/service.json
    python benchmarks/service.py --smoke --out /tmp/service.json   # the same code, smallest (under a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token"
WRITE = {"Authorization": f"Bearer {TOKEN}"}
MLP = {"model": {"hidden": [256]}, "training": {"epochs": 3}, "strategies": ["replay"]}
TEXT = {"model": {"backbone": "minilm", "adaptation": "frozen", "hidden": []}, "strategies": ["slda"],
        "promotion": {"max_drop": 0.15}}
# What a run measures: predict rounds, ingested rows, seconds of single-row feedback, fortunes exported for the
# replay row (None: all), whether MiniLM's predict rows run, and service settings of the new-class store.
FULL = {"rounds": 2, "ingest": 2000, "single_seconds": 20.0, "fortunes": None, "text_predict": True,
        "new_class": {}}
# --smoke (tests/test_benchmarks.py): every row kind once, small: one predict round of each server on the MLP
# alone, 100 ingested rows, 1 s of single rows, 25 fortunes a class (a batch of 50 rows starts an update) and
# 1 s loads (--seconds). Fashion-MNIST keeps its 300 rows a class: with 60, the new class's version predicted it
# on 40% of the probe, under the 50% the row waits for (120 s). The new class's 30 rows hold out too few to judge
# it (min_held_out), so its update starts when they have waited update_wait: 2 s here, not the default 60.
SMOKE = {"rounds": 1, "ingest": 100, "single_seconds": 1.0,
         "fortunes": {"max_train_per_class": 25, "max_test_per_class": 5}, "text_predict": False, "seconds": 1.0,
         "new_class": {"update_wait": 2.0}}


def floor_app(store: str):
    """The floor: FastAPI, one endpoint, the promoted learner's model called on the request's inputs."""
    import torch
    from fastapi import Body, FastAPI

    from retain.build import model_inputs
    from retain.loop import Project
    from retain.service.inputs import read_inputs

    project = Project(store)
    learner = project.store.load(device="cpu")
    model, names, described = learner.model.eval(), learner.class_names_, project.store.meta("inputs")
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict = Body(...)) -> dict:  # noqa: B008 - FastAPI's way to take the JSON body
        x = read_inputs(body["inputs"], described, project.config.scenario.files)
        with torch.no_grad():
            p = model(model_inputs(project.config, x)).softmax(1)
        return {"predictions": [{"label": names[i]} for i in p.argmax(1).tolist()]}

    return app


def start(command: list[str], port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {"RETAIN_TOKEN": TOKEN, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": []}).status_code:
                return process
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{command} did not start: {log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


class Connections:
    """Keep-alive HTTP/1.1 connections to one server, written and read by hand: a load generator
    that costs far less CPU a request than an HTTP client library, so that on two cores the server,
    not the client, is what is measured."""

    def __init__(self, port: int) -> None:
        self.port, self.idle = port, []

    async def request(self, raw: bytes) -> int:
        """Send on an idle connection, or a new one; a kept-alive connection the server has closed
        meanwhile (its idle timeout) is dropped and the request sent again on a new one, as HTTP
        clients do."""
        while self.idle:
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, raw)
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return await self._exchange(reader, writer, raw)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def raw_post(path: str, body: dict, headers: dict | None = None) -> bytes:
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def load(url: str, bodies: list[dict], rate: float, seconds: float, headers: dict | None = None) -> dict:
    """Open-loop: request i leaves at i / rate whatever the earlier ones do; latency of each."""
    port, path = int(url.split(":")[2].split("/")[0]), "/" + url.split("/", 3)[3]
    raws = [raw_post(path, b, headers) for b in bodies]
    n = int(rate * seconds)
    latencies, errors, kinds = [], 0, {}
    pool = Connections(port)
    gc.collect()
    gc.disable()  # a collection pausing the client would add its pause to the latencies it measures
    start = time.perf_counter() + 0.5  # the first request leaves once every task is made: none starts late

    async def one(i: int) -> None:
        nonlocal errors
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        sent = time.perf_counter()
        try:
            status = await pool.request(raws[i % len(raws)])
            if status != 200:
                errors += 1
                kinds[str(status)] = kinds.get(str(status), 0) + 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, StopIteration) as err:
            errors += 1
            kinds[type(err).__name__] = kinds.get(type(err).__name__, 0) + 1
        latencies.append(time.perf_counter() - sent)

    try:
        await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        gc.enable()
    wall = time.perf_counter() - start
    pool.close()
    lat = np.array(latencies) * 1000
    return {"requests": n, "errors": errors, "error_kinds": kinds, "rate_asked": rate,
            "rate_achieved": n / (wall - 0.5),
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max())}


def export(dataset: str, folder: Path, fmt: str, **options) -> Path:
    from retain.data.export import export as write

    return write(dataset, folder, fmt, **options)


def init(store: Path, config: dict, data: Path, **service) -> None:
    from retain.config import RunConfig
    from retain.loop import Project

    cfg = RunConfig.for_loop(config | {"service": service})
    Project.init(cfg, data, store)


def images_of(path: Path) -> tuple[list[str], list[str]]:
    """The images of an exported ``.npz`` batch as base64 PNG files, as a client sends them, and labels."""
    import base64
    import io

    from PIL import Image

    out = []
    with np.load(path) as z:
        for image in z["x"]:
            buffer = io.BytesIO()
            Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(buffer, format="PNG")
            out.append(base64.b64encode(buffer.getvalue()).decode())
        return out, [str(v) for v in z["y"].tolist()]


def texts_of(path: Path) -> tuple[list[str], list[str]]:
    import csv

    rows = list(csv.DictReader(path.open()))
    return [r["text"] for r in rows], [r["label"] for r in rows]


def serve(store: Path, port: int, work: Path, *extra: str) -> subprocess.Popen:
    return start([sys.executable, "-m", "retain.cli", "serve", str(store), "--port", str(port), *extra], port,
                 work / f"serve-{port}.log")


def floor(store: Path, port: int, work: Path) -> subprocess.Popen:
    return start([sys.executable, __file__, "--floor", str(store), "--port", str(port)], port,
                 work / f"floor-{port}.log")


def predict_rows(name: str, store: Path, bodies: list[dict], rate: float, seconds: float, work: Path,
                 rounds: int = 2) -> list[dict]:
    """The floor and the service alternately, ``rounds`` times each, under the same load (after a
    warm-up); a summary row keeps each side's best p99 (the machine is shared and noisy)."""
    from tests.served import free_port

    out = []
    for round_ in range(rounds):
        for kind, launch in (("floor", floor), ("service", serve)):
            port = free_port()
            process = launch(store, port, work)
            try:
                asyncio.run(load(f"http://127.0.0.1:{port}/predict", bodies, rate, min(5.0, seconds)))  # warm-up
                row = asyncio.run(load(f"http://127.0.0.1:{port}/predict", bodies, rate, seconds))
            finally:
                stop(process)
            out.append({"row": "predict", "model": name, "server": kind, "round": round_} | row)
            print(json.dumps(out[-1]), flush=True)
    best = {kind: min(r["p99_ms"] for r in out if r["server"] == kind) for kind in ("floor", "service")}
    out.append({"row": "predict summary", "model": name, "rate": rate, "seconds": seconds,
                "best_p99_ms_floor": best["floor"], "best_p99_ms_service": best["service"],
                "p99_vs_floor": best["service"] / best["floor"],
                "errors_service": sum(r["errors"] for r in out if r["server"] == "service")})
    print(json.dumps(out[-1]), flush=True)
    return out


def feedback_rows(store: Path, x: list, y: list, work: Path, single_seconds: float = 20.0) -> list[dict]:
    from tests.served import free_port

    port = free_port()
    process = serve(store, port, work)
    try:
        url = f"http://127.0.0.1:{port}/feedback"
        rows = [{"input": {"image": f}, "label": label} for f, label in zip(x, y, strict=True)]
        with httpx.Client(timeout=60) as client:
            client.post(url, json={"rows": rows[:10]}, headers=WRITE)  # warm-up
            start, sent = time.perf_counter(), 0
            for i in range(0, len(rows), 500):
                assert client.post(url, json={"rows": rows[i:i + 500]}, headers=WRITE).status_code == 200
                sent += len(rows[i:i + 500])
            batch = {"row": "feedback", "mode": "batches of 500", "rows": sent,
                     "rows_per_s": sent / (time.perf_counter() - start)}
        single = asyncio.run(load(url, [{"rows": [r]} for r in rows], 50, single_seconds, WRITE))
    finally:
        stop(process)
    out = [batch, {"row": "feedback", "mode": "single rows at 50/s"} | single]
    for row in out:
        print(json.dumps(row), flush=True)
    return out


def new_class_row(store: Path, x: list, y: list, work: Path) -> dict:
    """Seconds from the first row of a class never seen to a promoted version predicting it."""
    from tests.served import free_port

    port = free_port()
    process = serve(store, port, work)
    fresh = sorted(set(y))[-1]
    rows = [(f, label) for f, label in zip(x, y, strict=True) if label == fresh]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            before = client.get("/ready").json()["version"]
            start = time.perf_counter()
            for f, label in rows[:30]:  # one row a request, as labels trickle in
                client.post("/feedback", json={"rows": [{"input": {"image": f}, "label": label}]}, headers=WRITE)
            probe = {"inputs": [{"image": f} for f, _ in rows[30:60]]}
            while time.perf_counter() - start < 120:
                answer = client.post("/predict", json=probe).json()
                hits = sum(p["label"] == fresh for p in answer["predictions"])
                if answer["version"] != before and hits >= len(probe["inputs"]) / 2:
                    break
                time.sleep(0.2)
            seconds = time.perf_counter() - start
    finally:
        stop(process)
    row = {"row": "new_class", "class": fresh, "seconds": seconds, "version": answer["version"],
           "predicted_share": hits / len(probe["inputs"])}
    print(json.dumps(row), flush=True)
    return row


def replay_row(work: Path, screenshot: Path | None, rows: dict | None = None) -> dict:
    """The fortunes-language stream (``rows``: export caps, a class) through the service against the same
    strategy offline."""
    import torch

    from retain.build import build_learner, model_inputs
    from retain.config import RunConfig
    from retain.data import Experience, Stream
    from retain.data.files import LabelMap, load
    from tests.served import free_port

    data = export("fortunes_language", work / "fortunes", "csv", **(rows or {}))
    batches = sorted(p.name for p in data.iterdir() if p.is_dir())
    store = work / "text-replay"
    init(store, TEXT, data / batches[0] / "train.csv", min_rows=50, update_rows=100_000, update_wait=2.0,
         new_class_rows=100_000, poll=0.5)
    port = free_port()
    process = serve(store, port, work)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for b in batches[1:]:
                texts, labels = texts_of(data / b / "train.csv")
                for i in range(0, len(texts), 20):  # predict, then the labels come back by id
                    ids = [f"{b}-{j}" for j in range(i, min(i + 20, len(texts)))]
                    client.post("/predict", json={"inputs": [{"text": t, "id": k} for t, k in
                                                             zip(texts[i:i + 20], ids, strict=True)]})
                    client.post("/feedback", json={"rows": [{"id": k, "label": y} for k, y in
                                                            zip(ids, labels[i:i + 20], strict=True)]}, headers=WRITE)
                start = time.time()
                while client.get("/state").json()["queue"] and time.time() - start < 300:
                    time.sleep(0.5)
            time.sleep(2)
            right = total = 0
            for b in batches:
                texts, labels = texts_of(data / b / "test.csv")
                answer = client.post("/predict", json={"inputs": [{"text": t, "id": f"test-{b}-{i}"}
                                                                  for i, t in enumerate(texts)]}).json()
                right += sum(p["label"] == y for p, y in zip(answer["predictions"], labels, strict=True))
                total += len(labels)
            state = client.get("/state").json()
            for b in batches:  # measured: now their labels come back too, for the dashboard's accuracy over time
                _, labels = texts_of(data / b / "test.csv")
                client.post("/feedback", json={"rows": [{"id": f"test-{b}-{i}", "label": y}
                                                        for i, y in enumerate(labels)]}, headers=WRITE)
            if screenshot is not None:
                shoot(f"http://127.0.0.1:{port}/", screenshot)
    finally:
        stop(process)
    # offline: the same strategy fitted batch by batch on every training row, scored on the same tests
    cfg = RunConfig.for_loop(TEXT)
    labels = LabelMap(numbers_are_ids=False)
    parts = []
    for k, b in enumerate(batches):
        train, test = (load(data / b / f"{s}.csv", labels) for s in ("train", "test"))
        parts.append(Experience(model_inputs(cfg, train.x), train.y, model_inputs(cfg, test.x), test.y, id=k))
    stream = Stream(parts, n_classes=len(labels.names), class_names=labels.names)
    learner = build_learner(stream, cfg, cfg.strategies[0], 0)
    for exp in stream:
        learner.fit(exp)
    x = torch.cat([e.x_test for e in stream])
    y = torch.cat([e.y_test for e in stream])
    offline = float((learner.predict(x) == y).float().mean())
    row = {"row": "replay", "stream": "fortunes_language", "service_accuracy": right / total,
           "offline_accuracy": offline, "difference_points": 100 * (right / total - offline),
           "versions": len(state["versions"]), "served": state["served"], "feedback": state["feedback"],
           "prequential_accuracy": state["correct"] / max(state["labelled"], 1)}
    print(json.dumps(row), flush=True)
    return row


def shoot(url: str, path: Path) -> None:
    from tests.served import headless_chromium

    browser = headless_chromium(1200, 1300)
    try:
        browser.get(url)
        time.sleep(4)
        browser.save_screenshot(str(path))
    finally:
        browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each predict load")
    parser.add_argument("--rows", nargs="+", default=["predict", "feedback", "new_class", "replay"])
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code: every row kind "
                        "once on a few rows, 1 s loads, the MLP's predict rows alone")
    args = parser.parse_args()
    size = SMOKE if args.smoke else FULL
    seconds = SMOKE["seconds"] if args.smoke else args.seconds
    if args.floor:
        import uvicorn

        uvicorn.run(floor_app(args.floor), host="127.0.0.1", port=args.port, log_level="warning")
        return
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fashion = export("fashion_mnist", work / "fashion", "npz", max_train_per_class=300, max_test_per_class=100)
        x, y = images_of(fashion / "00" / "test.npz")
        if "predict" in args.rows:
            store = work / "mlp"
            init(store, MLP, fashion / "00" / "train.npz", min_rows=10**6, update_rows=10**6, new_class_rows=10**6)
            rows += predict_rows("fashion_mnist mlp", store, [{"inputs": [{"image": f}]} for f in x], 200,
                                 seconds, work, size["rounds"])
        if "predict" in args.rows and size["text_predict"]:
            text = work / "text"
            data = export("fortunes_language", work / "fortunes-p", "csv")
            init(text, TEXT, data / "00" / "train.csv", min_rows=10**6, update_rows=10**6, new_class_rows=10**6)
            texts, _ = texts_of(data / "00" / "test.csv")
            rows += predict_rows("fortunes minilm", text, [{"inputs": [{"text": t}]} for t in texts], 50,
                                 seconds, work, size["rounds"])
        if "feedback" in args.rows:
            store = work / "ingest"
            init(store, MLP, fashion / "00" / "train.npz", min_rows=10**6, update_rows=10**6, new_class_rows=10**6)
            xs, ys = images_of(fashion / "01" / "train.npz")
            n = size["ingest"]
            rows += feedback_rows(store, (xs * 4)[:n], (ys * 4)[:n], work, size["single_seconds"])
        if "new_class" in args.rows:
            store = work / "new-class"
            init(store, MLP | {"promotion": {"max_drop": 0.5}}, fashion / "00" / "train.npz", new_class_rows=20,
                 poll=0.2, **size["new_class"])
            xs, ys = images_of(fashion / "01" / "train.npz")
            rows.append(new_class_row(store, xs, ys, work))
        if "replay" in args.rows:
            shot = args.out.parent / "service_dashboard.png" if args.out else None
            rows.append(replay_row(work, shot, size["fortunes"]))
    if args.out:  # rows of kinds not run this time are kept
        kept = json.loads(args.out.read_text()) if args.out.exists() else []
        ran = {r["row"].split()[0] for r in rows}
        args.out.write_text(json.dumps([r for r in kept if r["row"].split()[0] not in ran] + rows, indent=1))


if __name__ == "__main__":
    main()
