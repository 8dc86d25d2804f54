"""A detection store through the one loop: init and update with boxes, predict and evaluate from the command line,
and the served round trip (an image in, boxes out, corrected boxes back as feedback, learned)."""

import base64
import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from retain.cli import main
from retain.config import ConfigError, ServiceConfig
from retain.data.box_files import box_table, write_box_table
from retain.data.scenes import detection_stream
from retain.loop import Project
from retain.metrics.boxes import box_iou, xywh_to_xyxy
from retain.service.app import create_app
from retain.tasks.detection import Detection

from .served import TOKEN, WRITE

SIDE = 96  # the images' own side; the store reads them at 64: answers must come back in the images' pixels
CONFIG = {"task": "detection", "model": {"backbone": "tiny", "image_size": 64, "width": 32},
          "training": {"epochs": 15, "lr": 2e-3, "batch_size": 16}, "min_held_out": 5,
          "methods": [{"label": "pseudo-labels + box replay", "compose": ["pseudo_labels", "box_replay"]}]}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two batches as a user's files: t-shirts and trousers, then pullovers in scenes where the old classes
    still appear unlabelled; and test images with every object labelled."""
    root = tmp_path_factory.mktemp("boxes")
    stream = detection_stream([(0, 1), (2,)], train_per_experience=200, test=40, size=SIDE, cache=False)
    for name, scenes in (("first", stream.experiences[0].train), ("second", stream.experiences[1].train),
                         ("test", stream.test)):
        write_box_table(scenes, root / name, stream.class_names)
    (root / "detect.yaml").write_text(yaml.safe_dump(CONFIG))
    return root


@pytest.fixture(scope="module")
def store(files, tmp_path_factory):
    """A store that learned both batches (made once: the tests below copy it before they change it)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("stores") / "store"
    assert main(["init", str(files / "detect.yaml"), "--data", str(files / "first" / "boxes.csv"),
                 "--store", str(path)]) == 0
    assert main(["update", str(path), "--data", str(files / "second" / "boxes.csv")]) == 0
    return path


def _matched(predicted, truth):
    """How many predicted boxes overlap a true box of their class by IoU 0.5 or more (both in image pixels)."""
    hits = 0
    for box in predicted:
        mine = [t["box"] for t in truth if t["label"] == box["label"]]
        if mine:
            overlap = box_iou(xywh_to_xyxy(torch.tensor([box["box"]])), xywh_to_xyxy(torch.tensor(mine)))
            hits += float(overlap.max()) >= 0.5
    return hits


def _truth(files, part="test"):
    """Each image's true boxes as an answer gives them, by file name."""
    out = {}
    for image in box_table(files / part / "boxes.csv"):
        out[image.path.name] = [{"label": label, "box": [x1, y1, x2 - x1, y2 - y1]}
                                for (x1, y1, x2, y2), label in zip(image.boxes, image.labels, strict=True)]
    return out


def test_a_store_learns_new_classes_batch_by_batch_and_keeps_the_old_ones(store, files):
    project = Project(store)
    versions = project.versions()
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["promoted"]
    assert project.store.labels() == ["trouser", "t-shirt", "pullover"]  # in the order the tables first name them
    assert versions[1]["reason"].startswith("batch-0001: mAP@0.5")
    report = project.evaluate(files / "test" / "boxes.csv")
    # an untrained detector scores 0 (its heat maps start at 1%); the first batch alone knows no pullover
    first = project.evaluate(files / "test" / "boxes.csv", version=1)
    assert first["per_class"]["pullover"] == 0.0 and first["unknown_classes"] == ["pullover"]
    assert report["per_class"]["pullover"] > 0.2, report  # 0.43 with this seed
    assert min(report["per_class"][c] for c in ("trouser", "t-shirt")) > 0.1, report  # the old classes still found
    assert report["map50"] > 0.2 and report["unknown_classes"] == []


def test_predict_writes_boxes_in_the_images_own_pixels_as_a_table_update_reads(store, files, tmp_path, capsys):
    out = tmp_path / "boxes.csv"
    assert main(["predict", str(store), "--data", str(files / "test"), "--out", str(out)]) == 0
    assert "boxes in 40 images by version 2" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert set(rows[0]) == {"path", "x", "y", "w", "h", "label", "score"}
    boxes = [r for r in rows if r["label"]]
    assert all(0 <= float(r["x"]) and float(r["x"]) + float(r["w"]) <= SIDE + 0.1 for r in boxes)
    assert all(float(r["score"]) >= 0.3 for r in boxes)  # model.min_score
    read_back = Project(store).kind.read(out)  # the table reads back as a batch would, images and all
    assert len(read_back) == 40 and int((read_back.y[..., 0] >= 0).sum()) == len(boxes)
    truth = _truth(files)
    predicted = {Path(r["path"]).name: [] for r in rows}
    for r in boxes:
        predicted[Path(r["path"]).name].append({"label": r["label"], "box": [float(r[k]) for k in "xywh"]})
    hits = sum(_matched(predicted[name], truth[name]) for name in truth)
    # the boxes are in the images' pixels: left at the model's 64 they would miss most objects they find
    shrunk = {n: [dict(b, box=[v * 64 / SIDE for v in b["box"]]) for b in found] for n, found in predicted.items()}
    missed = sum(_matched(shrunk[name], truth[name]) for name in truth)
    assert hits >= 0.2 * len(boxes) and hits > 3 * missed, (hits, missed, len(boxes))  # 87, 3 of 277 boxes
    assert main(["predict", str(store), "--data", str(files / "test" / "image-00000.png"), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer[0]["file"].endswith("image-00000.png") and {"label", "box", "score"} <= set(answer[0]["boxes"][0])
    assert main(["evaluate", str(store), "--data", str(files / "test" / "boxes.csv")]) == 0
    said = capsys.readouterr().out
    assert "mAP@0.5" in said and "on 40 images" in said and "pullover" in said


def test_bad_configs_and_batches_are_refused_naming_the_field_or_row(files, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(CONFIG | {"methods": [{"label": "a", "compose": ["der"]}]}))
    with pytest.raises(ConfigError, match="der does not apply to a detector"):
        Detection.read_config(bad)
    bad.write_text(yaml.safe_dump(CONFIG | {"model": {"image_size": 100}}))
    with pytest.raises(ConfigError, match="model.image_size: .*multiple of 16"):
        Detection.read_config(bad)
    table = tmp_path / "batch" / "boxes.csv"
    table.parent.mkdir()
    table.write_text("path,x,y,w,h,label\nmissing.png,1,2,3,4,cat\n")
    assert main(["init", str(files / "detect.yaml"), "--data", str(table), "--store", str(tmp_path / "s")]) != 0
    assert "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing was made
    shutil.copy(files / "first" / "image-00000.png", table.parent / "a.png")
    table.write_text("path,x,y,w,h,label\na.png,,,,,\n")  # images, but no object labelled in any
    assert main(["init", str(files / "detect.yaml"), "--data", str(table), "--store", str(tmp_path / "s")]) != 0
    assert "no image has a labelled box" in capsys.readouterr().err


def _image(files, name):
    return base64.b64encode((files / "test" / name).read_bytes()).decode()


def test_served_images_get_boxes_and_corrected_boxes_are_learned(store, files, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(store, served)
    truth = _truth(files)
    names = sorted(truth)
    app = create_app(served, ServiceConfig(poll=0.05, update_wait=3600), token=TOKEN)
    with TestClient(app) as api:
        deadline = time.time() + 30
        while api.get("/ready").status_code == 503 and time.time() < deadline:
            time.sleep(0.05)
        answer = api.post("/predict", json={"inputs": [{"image": _image(files, n), "id": f"p{i}"}
                                                       for i, n in enumerate(names[:30])]}).json()
        assert answer["version"] == 2 and len(answer["predictions"]) == 30
        first = answer["predictions"][0]
        assert first["id"] == "p0" and {"label", "box", "score"} <= set(first["boxes"][0])
        assert all(b["box"][0] + b["box"][2] <= SIDE + 0.1 for p in answer["predictions"] for b in p["boxes"])
        # the dashboard's latest prediction: the image and its boxes
        recent = api.get("/state").json()["recent"]
        assert recent["version"] == 2 and recent["image"] == _image(files, names[29]) and "boxes" in recent

        # feedback: the true boxes of each prediction (one image's pullover renamed: a class the store lacks)
        rows = [{"id": f"p{i}", "boxes": truth[n]} for i, n in enumerate(names[:30])]
        rows[0]["boxes"] = [dict(b, label="sweater") for b in truth[names[0]]]
        bad = api.post("/feedback", json={"rows": [{"id": "p1", "boxes": [{"label": "cat", "box": [1, 2, 0, 3]}]}]},
                       headers=WRITE)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "rows", 0, "boxes"]
        assert "width and height must be positive" in bad.json()["detail"][0]["msg"]
        label = api.post("/feedback", json={"rows": [{"id": "p1", "label": "trouser"}]}, headers=WRITE)
        assert label.status_code == 422 and "feedback sends boxes" in label.json()["detail"][0]["msg"]
        taken = api.post("/feedback", json={"rows": rows}, headers=WRITE).json()
        assert taken["accepted"] == 30 and taken["new_classes"] == ["sweater"]
        metrics = api.get("/metrics").text
        labelled = next(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith("retain_prequential_accuracy"))
        assert 0.2 < labelled < 1.0  # the answers' F1 against the corrected boxes, not right-or-wrong labels

        result = api.post("/update", headers=WRITE).json()
        assert result["version"] == 3 and result["rows"] == 30, result
        assert "sweater" in result["new_classes"]
    assert Project(served).store.labels()[-1] == "sweater"


def test_the_dashboard_draws_the_latest_prediction_with_its_boxes(store, files, tmp_path):
    from selenium.webdriver.common.by import By

    from .served import Served, headless_chromium
    from .test_service_live import ARTEFACTS, _until

    served = tmp_path / "served"
    shutil.copytree(store, served)
    server = Served(served).wait()
    browser = headless_chromium()
    try:
        image = _image(files, "image-00003.png")
        answer = server.client.post("/predict", json={"inputs": [{"image": image}]}).json()
        boxes = answer["predictions"][0]["boxes"]
        assert boxes, answer  # this image has objects the version finds
        browser.get(server.url + "/")
        assert _until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#recent rect.box")) == len(boxes))
        assert browser.find_element(By.ID, "recent-section").is_displayed()
        assert browser.find_element(By.CSS_SELECTOR, "#recent image").get_attribute("href").endswith(image)
        labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#recent text")]
        assert labels == [f"{b['label']} {100 * b['score']:.0f}%" for b in boxes]
        first = browser.find_element(By.CSS_SELECTOR, "#recent rect.box")
        assert [float(first.get_attribute(k)) for k in ("x", "y", "width", "height")] == boxes[0]["box"]
        assert browser.find_element(By.CSS_SELECTOR, "#recent").get_dom_attribute("viewBox") == f"0 0 {SIDE} {SIDE}"
        ARTEFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTEFACTS / "dashboard-detection.png"))
        assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        browser.quit()
        server.stop()


def test_boxes_of_a_wide_image_scale_both_ways_and_bad_feedback_boxes_are_named(store, tmp_path):
    import io

    from PIL import Image

    from retain.metrics.detection import Boxes

    kind = Project(store).kind
    picture = io.BytesIO()
    Image.new("RGB", (128, 32), (90, 120, 30)).save(picture, format="PNG")  # 2x wider, half as high as the model's
    rows = kind.request_rows([{"image": base64.b64encode(picture.getvalue()).decode()}], "inputs")
    assert rows.size.tolist() == [[128, 32]] and tuple(rows.x.shape[-2:]) == (64, 64)
    sent = json.dumps([{"label": "trouser", "box": [32, 8, 64, 16]}, {"label": " sweater ", "box": [0, 0, 8, 4]}])
    taught, names = kind.with_answers(rows, [sent])
    assert names[-1] == "sweater" and kind.answer_names(rows, [sent]) == ["trouser", "sweater"]
    assert taught.y[0, 0].tolist() == [0.0, 16.0, 16.0, 48.0, 48.0]  # x halved, y doubled: the model's 64 x 64
    # and back: a detection at the model's pixels is answered in the image's
    answer = kind._answer(Boxes(taught.y[0, :1, 1:], torch.tensor([0]), torch.tensor([0.9])), names, (128, 32))
    assert answer == [{"label": "trouser", "box": [32.0, 8.0, 64.0, 16.0], "score": 0.9}]
    # a box squeezed to nothing against the edge is no answer, and a stored one with no area scores as absent
    flat = kind._answer(Boxes(torch.tensor([[64.0, 10.0, 64.0, 20.0]]), torch.tensor([0]), torch.tensor([0.9])),
                        names, (128, 32))
    assert flat == []
    stored = json.dumps([{"label": "trouser", "box": [128, 8, 0, 16], "score": 0.9}])
    assert kind.answer_score(stored, json.dumps([])) == 1.0
    assert "reaches outside the image, which is 128 x 32" in kind.answer_problem(
        rows, 0, json.dumps([{"label": "a", "box": [120, 0, 20, 8]}]))
    many = json.dumps([{"label": "a", "box": [1, 1, 2, 2]}] * 25)
    assert "at most 24 an image (model.max_boxes)" in kind.answer_problem(rows, 0, many)
    assert kind.answer_problem(rows, 0, sent) is None
