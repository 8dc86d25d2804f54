"""Object detection: scenes with the background shift, a tiny detector that learns, what the learner refuses."""

import pytest
import torch

from retain.data import Experience
from retain.data.scenes import PAD, detection_stream, pack, unpack
from retain.engine import Learner
from retain.engine.detection import DetectionLearner
from retain.metrics.detection import Boxes, mean_average_precision
from retain.models import make_model
from retain.models.detector import PRIOR, Detector, detect, targets
from retain.strategies import make_strategy


def _experience(scenes, classes, index=0):
    x, y = pack(scenes)
    return Experience(x, y, x[:0], y[:0], id=index, classes=tuple(classes))


def test_later_scenes_hold_old_objects_unlabelled_and_tests_label_everything():
    stream = detection_stream([(0, 1), (2, 3)], train_per_experience=60, test=30, size=64, cache=False)
    first, second = stream.experiences
    assert {int(c) for s in first.train for c in s.labels} == {0, 1}
    assert {int(c) for s in second.train for c in s.labels} == {2, 3}  # only the new classes are labelled...
    hidden = sum(int((s.labels < 2).sum()) for s in second.scenes)
    assert hidden > 30  # ...while old objects are in the pictures
    assert all(len(s.labels) >= 1 for s in second.train)  # every scene brings a new object
    assert {int(c) for s in stream.test for c in s.labels} == {0, 1, 2, 3}
    # boxes are exact: inside the image, and the pixels of an object differ from the background around it
    boxes = torch.cat([s.boxes for s in stream.test])
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all())


def test_a_generated_stream_is_the_same_from_its_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path))
    fresh = detection_stream([(0,), (1,)], train_per_experience=5, test=4, size=48)
    cached = detection_stream([(0,), (1,)], train_per_experience=5, test=4, size=48)
    assert list((tmp_path / "scenes").glob("*.safetensors"))
    for a, b in zip(fresh.test + fresh.experiences[1].scenes, cached.test + cached.experiences[1].scenes, strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)


def test_a_tiny_detector_learns_two_classes_in_seconds():
    torch.manual_seed(0)
    stream = detection_stream([(0, 1)], train_per_experience=200, test=50, size=64, cache=False)
    learner = DetectionLearner(Detector("tiny", 2), lr=2e-3, epochs=15, batch_size=16)
    test_x, test_y = pack(stream.test)
    truth = [Boxes(b, labels) for b, labels in unpack(test_y)]
    before = mean_average_precision(learner.detect(test_x), truth)
    learner.fit(_experience(stream.experiences[0].train, (0, 1)))
    after = mean_average_precision(learner.detect(test_x), truth)
    assert before["map50"] < 0.01 and learner.seen_classes_ == [0, 1]
    assert after["map50"] > 0.3, after  # 0.37 with this seed (3 s)


def test_the_head_grows_and_keeps_old_classes_weights():
    model = Detector("tiny", 2)
    weight, bias = model.heat.weight.detach().clone(), model.heat.bias.detach().clone()
    model.add_classes(4)
    assert model.n_classes == 4
    assert torch.equal(model.heat.weight[:2], weight) and torch.equal(model.heat.bias[:2], bias)
    assert torch.allclose(torch.sigmoid(model.heat.bias[2:]), torch.tensor(PRIOR))  # new classes start at the prior
    learner = DetectionLearner(Detector("tiny", 2), batch_size=4)
    stream = detection_stream([(0, 1), (2,)], train_per_experience=4, test=2, size=32, cache=False)
    x, y = pack(stream.experiences[1].train)
    learner.fit(Experience(x, y, x[:0], y[:0], id=1, classes=(2,)))
    assert learner.model.n_classes == 3 and learner.seen_classes_ == [2]  # grown to the class the boxes name
    with pytest.raises(ValueError, match="cannot shrink"):
        learner.model.add_classes(1)


def test_a_frozen_backbone_is_saved_unless_its_package_holds_its_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    model = Detector("efficientnet_lite0", pretrained=False)  # frozen and random: only the save has it
    assert not model.train_backbone and "backbone.stem.0.weight" in DetectionLearner._saved_names(model)
    model.pretrained = True  # frozen and pretrained (without loading the weights): the package has it
    assert not any(n.startswith("backbone.") for n in DetectionLearner._saved_names(model))


def test_targets_wider_than_max_boxes_are_cut_to_it_keeping_every_real_box():
    y = torch.full((2, 30, 5), float(PAD))
    y[0, 0], y[0, 27], y[1, 3] = torch.tensor([0., 1., 1., 9., 9.]), torch.tensor([1., 2., 2., 8., 8.]), 0.0
    x = torch.rand(2, 3, 32, 32)
    wide = DetectionLearner(Detector("tiny"), max_boxes=24)._widened(Experience(x, y, x[:0], y[:0], classes=(0, 1)))
    assert wide.y_train.shape == (2, 24, 5)
    assert sorted(wide.y_train[0, :, 0].tolist())[-2:] == [0.0, 1.0] and (wide.y_train[1, :, 0] != PAD).sum() == 1


def test_centres_off_the_grid_clamp_to_its_edge_and_detections_stay_in_the_image():
    _, _, at = targets([(torch.tensor([[-20., -20., -4., -4.]]), torch.tensor([0]))], 1, (4, 4))
    assert at.nonzero().tolist() == [[0, 0, 0]]  # not wrapped round to the far corner
    out = torch.full((1, 5, 4, 4), -9.0)
    out[0, 1:] = 3.0  # boxes of e^3 cells, far wider than the 32-pixel image
    out[0, 0, 0, 0] = 4.0
    boxes = detect(out, 1)[0].boxes
    assert boxes.tolist() == [[0.0, 0.0, 32.0, 32.0]]


def test_box_replay_pastes_nowhere_it_would_cover_most_of_a_labelled_box():
    replay = make_strategy("box_replay", max_overlap=0.3)
    small = torch.tensor([[0., 10., 10., 14., 14.]] + [[float(PAD), 0., 0., 0., 0.]])
    # a large crop over a small box: IoU 16/400 = 0.04, but it covers all of the box
    assert replay._hides(torch.tensor([[0., 0., 20., 20.]]), small)
    assert not replay._hides(torch.tensor([[12., 12., 32., 32.]]), small)  # a quarter of it


def test_distillation_trains_old_classes_an_image_labels_and_compares_against_the_pasted_images():
    from types import SimpleNamespace

    from retain.strategies.contract import Step

    torch.manual_seed(0)
    stream = detection_stream([(0,), (1,)], train_per_experience=8, test=2, size=32, cache=False)
    distill = make_strategy("detection_distill")
    learner = DetectionLearner(Detector("tiny"), [distill], batch_size=4)
    learner.fit(_experience(stream.experiences[0].train, (0,)))
    learner.model.add_classes(2)
    distill.before_experience(learner, SimpleNamespace(classes=(1,)))
    x, y = pack(stream.experiences[1].train[:4])
    y = DetectionLearner(learner.model, max_boxes=8)._widened(Experience(x, y, x[:0], y[:0], classes=(1,))).y_train
    y[0, -1] = torch.tensor([0.0, 2.0, 2.0, 12.0, 12.0])  # a pseudo-label or a pasted box of the old class 0
    t = torch.zeros(4, dtype=torch.long)
    learner.row_loss = lambda step, logits, classes=None: classes
    step = Step(x, y, t, incoming=4)
    assert distill.task_loss(learner, step, None).tolist() == [[True, True], [False, True], [False, True],
                                                                [False, True]]
    pasted = x.clone()
    pasted[1, :, :16, :16] = 0.5
    logits = learner.model(pasted)
    cached = distill.loss(learner, Step(pasted, y, t, 4, rows=torch.arange(4), source=(x, y, t)), logits)
    direct = distill.loss(learner, Step(pasted, y, t, 4), logits)  # the old model run over the pasted images
    assert torch.allclose(cached, direct, atol=1e-6)


def test_an_image_with_more_boxes_than_the_learner_keeps_is_refused_by_name():
    x = torch.rand(2, 3, 32, 32)
    y = torch.full((2, 3, 5), float(PAD))
    y[1, :, 0] = 0
    y[1, :, 1:] = torch.tensor([2.0, 2.0, 10.0, 10.0])
    learner = DetectionLearner(Detector("tiny"), max_boxes=2)
    with pytest.raises(ValueError, match="image 1 of experience 0 has 3 boxes, max_boxes is 2: raise it"):
        learner.fit(Experience(x, y, x[:0], y[:0], classes=(0,)))


def test_detector_methods_are_refused_by_the_other_learners_and_class_methods_by_the_detector():
    with pytest.raises(ValueError, match="box_replay trains an object detector"):
        Learner(make_model("mlp", (4,), 2, hidden=(8,)), [make_strategy("box_replay")], device="cpu")
    with pytest.raises(ValueError, match="lwf does not apply to a detector.*choose from:.*box_replay"):
        DetectionLearner(Detector("tiny"), [make_strategy("lwf")])
    with pytest.raises(ValueError, match="use policy: reservoir"):
        DetectionLearner(Detector("tiny"), [make_strategy("replay", memory_size=10)])


def test_pseudo_labels_add_the_old_detectors_finds_to_free_rows_only():
    torch.manual_seed(0)
    stream = detection_stream([(0, 1), (2, 3)], train_per_experience=200, test=10, size=64, cache=False)
    pseudo = make_strategy("pseudo_labels", min_score=0.3)
    learner = DetectionLearner(Detector("tiny"), [pseudo], lr=2e-3, epochs=10, batch_size=16)
    learner.fit(_experience(stream.experiences[0].train, (0, 1)))
    learner.fit(_experience(stream.experiences[1].train, (2, 3), 1))
    # the old detector found old objects hidden in the second experience's scenes, and nothing new
    assert int(pseudo.added_[:2].sum()) > 50 and int(pseudo.added_[2:].sum()) == 0, pseudo.added_


def _png(path, width, height):
    from PIL import Image

    Image.new("RGB", (width, height), (200, 30, 30)).save(path)


def test_box_tables_and_coco_files_read_to_the_same_scaled_scenes(tmp_path):
    from retain.data.box_files import load_scenes, read_boxed

    _png(tmp_path / "a.png", 200, 100)
    _png(tmp_path / "b.png", 50, 50)
    (tmp_path / "boxes.csv").write_text("path,x,y,w,h,label\na.png,10,20,30,40,cat\na.png,100,0,100,100,dog\n"
                                        "b.png,,,,,\n")
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
            "categories": [{"id": 3, "name": "dog"}, {"id": 4, "name": "cat"}],
            "annotations": [{"image_id": 1, "category_id": 4, "bbox": [10, 20, 30, 40]},
                            {"image_id": 1, "category_id": 3, "bbox": [100, 0, 100, 100]}]}
    (tmp_path / "coco.json").write_text(__import__("json").dumps(coco))
    for name in ("boxes.csv", "coco.json"):
        scenes, sizes, names = load_scenes(read_boxed(tmp_path / name), 64, classes=["dog"])
        assert sizes == [(200, 100), (50, 50)] and names == ["dog", "cat"]  # known names keep their ids
        assert scenes[0].labels.tolist() == [1, 0] and len(scenes[1].labels) == 0
        # x scaled by 64 / 200, y by 64 / 100
        assert scenes[0].boxes.flatten().tolist() == pytest.approx([3.2, 12.8, 12.8, 38.4, 32.0, 0.0, 64.0, 64.0])
        assert scenes[0].image.shape == (3, 64, 64)


@pytest.mark.parametrize(("content", "message"), [
    ("path,x,y,w,h,label\na.png,1,2,0,4,cat\n", "row 2: the box is 0 x 4 pixels; width and height must be positive"),
    ("path,x,y,w,h,label\na.png,1,2,3,nan,cat\n", "row 2: h is 'nan'; give a finite number"),
    ("path,x,y,w,h,label\na.png,1,two,3,4,cat\n", "row 2: y 'two' is not a number"),
    ("path,x,y,w,h,label\na.png,1,2,3,4,\n", "row 2: label is empty"),
    ("path,x,y,w,label\na.png,1,2,3,cat\n", "row 2: no column 'h'"),
    ("path,x,y,w,h,label\na.png,30,2,40,4,cat\n", "reaches outside a.png, which is 50 x 50 pixels"),
    ("path,x,y,w,h,label\nmissing.png,1,2,3,4,cat\n", "missing.png: not a regular file"),
])
def test_bad_box_tables_are_refused_naming_the_row_and_field(tmp_path, content, message):
    from retain.data.box_files import load_scenes, read_boxed
    from retain.data.files import FileError

    _png(tmp_path / "a.png", 50, 50)
    (tmp_path / "boxes.csv").write_text(content)
    with pytest.raises(FileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_scenes(read_boxed(tmp_path / "boxes.csv"), 32)


def test_bad_coco_annotations_are_refused_by_index(tmp_path):
    import json

    from retain.data.box_files import read_boxed
    from retain.data.files import FileError

    base = {"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "name": "cat"}]}
    for note, message in [({"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}, "image_id 9 is not one"),
                          ({"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}, "category_id 5 is not one"),
                          ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}, r"bbox must be \[x, y, width"),
                          ({"image_id": 1, "bbox": [0, 0, 1, 1]}, "an annotation needs image_id, category_id")]:
        (tmp_path / "c.json").write_text(json.dumps(base | {"annotations": [note]}))
        with pytest.raises(FileError, match=r"annotations\[0\]: " + message):
            read_boxed(tmp_path / "c.json")
    with pytest.raises(FileError, match="give a COCO .json file or a table"):
        read_boxed(tmp_path / "boxes.xml")


def test_distillation_runs_the_old_detector_over_the_training_set_once_an_experience(monkeypatch):
    from retain.strategies.detection_distill import DetectionDistill

    calls = []
    bind = DetectionDistill._bind

    def counted(self):
        bind(self)
        if self._old is not None:
            fn = self._old.fn
            self._old.fn = lambda x, t: calls.append(len(x)) or fn(x, t)

    monkeypatch.setattr(DetectionDistill, "_bind", counted)
    stream = detection_stream([(0,), (1,)], train_per_experience=24, test=2, size=32, cache=False)
    learner = DetectionLearner(Detector("tiny"), [make_strategy("detection_distill")], epochs=3, batch_size=4)
    for i, e in enumerate(stream.experiences):
        learner.fit(_experience(e.train, e.classes, i))
    # 24 rows in bulks of 4, once: not again at each of the 18 steps of the 3 epochs
    assert calls == [4] * 6
