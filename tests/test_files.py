"""The user's own files: loaders, their one-line errors, and `retain export` round trips."""

import json

import numpy as np
import pytest
import torch
import yaml

from retain.cli import main
from retain.data import class_incremental
from retain.data.files import FileError, LabelMap, load, load_audio_folder, load_image_folder, load_stream, load_table


def test_a_csv_of_features_and_label_names(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,cat\n3,4.5,dog\n5,6,cat\n")
    labels = LabelMap()
    rows = load_table(path, labels)
    assert rows.x.tolist() == [[1, 2], [3, 4.5], [5, 6]] and rows.y.tolist() == [0, 1, 0]
    assert labels.names == ["cat", "dog"] and rows.modality == "tabular"
    assert rows.read_as == "2 feature columns (a, b), labels from 'label'"
    later = tmp_path / "later.jsonl"
    later.write_text('{"a": 1, "b": 1, "label": "bird"}\n{"a": 2, "b": 2, "label": "dog"}\n')
    assert load_table(later, labels).y.tolist() == [2, 1] and labels.new == ["bird"]  # a new class, reported


def _png(path, value=128, size=5, mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 0)).save(path)


def test_an_image_folder_of_any_size_is_resized(tmp_path):
    _png(tmp_path / "cat" / "1.png", 255, size=10)
    _png(tmp_path / "dog" / "2.png", 0, size=4)
    rows = load_image_folder(tmp_path, LabelMap(), size=8)
    assert rows.x.shape == (2, 1, 8, 8) and rows.y.tolist() == [0, 1] and float(rows.x[0].min()) == 1.0


def _wav(path, rate=16_000, seconds=0.5, dtype=np.float32):
    from scipy.io import wavfile

    path.parent.mkdir(parents=True, exist_ok=True)
    wave = (0.5 * np.sin(np.arange(int(rate * seconds)) / 10)).astype(np.float32)
    wavfile.write(path, rate, wave if dtype == np.float32 else (wave * 32767).astype(np.int16))


def test_an_audio_folder_is_resampled_and_padded(tmp_path):
    _wav(tmp_path / "yes" / "a.wav", rate=8_000, seconds=0.5, dtype=np.int16)
    _wav(tmp_path / "no" / "b.wav", rate=16_000, seconds=2.0)
    rows = load_audio_folder(tmp_path, LabelMap())
    assert rows.x.shape == (2, 16_000) and rows.y.tolist() == [0, 1]  # 'no' sorts first, 'a.wav' before 'b.wav'
    assert float(rows.x[0, 9000:].abs().max()) == 0.0 and 0.4 < float(rows.x[0].abs().max()) < 0.6


@pytest.mark.parametrize(
    "write,message",
    [
        (lambda p: p.joinpath("d.csv").write_text("a,b\n1,2\n"), r"d.csv: no label column 'label' \(columns: a, b\)"),
        (lambda p: p.joinpath("d.csv").write_text("a,label\n1,x\n2,y,3\n"), r"d.csv: row 3: 3 fields, the header has"),
        (lambda p: p.joinpath("d.csv").write_bytes(b"a,label\n1,x\n2,caf\xe9\n"), r"d.csv: row 3: not UTF-8"),
        (lambda p: p.joinpath("d.csv").write_text("a,label\n1,x\nseven,y\n"), r"d.csv: row 3: field 'a': 'seven'"),
        (lambda p: p.joinpath("d.csv").write_text("a,label\n1,x\n2,\n"), r"d.csv: row 3: field 'label' is empty"),
        (lambda p: p.joinpath("d.jsonl").write_text('{"a": 1, "label": "x"}\n{"a": 2,\n'), r"d.jsonl: row 2: not JSON"),
        (lambda p: p.joinpath("d.parquet").write_bytes(b"PAR1 not really"), r"d.parquet: not a readable Parquet"),
        (lambda p: np.savez(p / "d.npz", x=np.zeros((3, 2)), z=np.zeros(3)), r"d.npz: no array 'y'"),
    ],
    ids=["unknown-label-column", "ragged", "encoding", "not-a-number", "empty-label", "bad-json", "parquet", "npz"],
)
def test_a_malformed_table_names_file_row_and_field(tmp_path, write, message):
    write(tmp_path)
    (path,) = tmp_path.iterdir()
    with pytest.raises(FileError, match=message):
        load(path, LabelMap())


def test_a_datasets_folder_with_class_names(tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({"text": ["the cat sat", "das ist gut"], "label": [1, 0]},
                                       features=datasets.Features({"text": datasets.Value("string"),
                                                                   "label": datasets.ClassLabel(names=["de", "en"])}))
    table.save_to_disk(str(tmp_path / "split"))
    labels = LabelMap()
    rows = load(tmp_path / "split", labels)
    assert labels.names == ["en", "de"] and rows.y.tolist() == [0, 1] and rows.modality == "text"
    (tmp_path / "split" / "state.json").write_text("{")
    with pytest.raises(FileError, match="split: not a readable datasets folder"):
        load(tmp_path / "split", LabelMap())


def test_unreadable_images_and_audio_name_the_file(tmp_path):
    _png(tmp_path / "img" / "cat" / "1.png")
    (tmp_path / "img" / "dog").mkdir()
    (tmp_path / "img" / "dog" / "2.png").write_bytes(b"not an image")
    with pytest.raises(FileError, match=r"dog/2.png: not a readable image"):
        load(tmp_path / "img", LabelMap())
    _wav(tmp_path / "wav" / "yes" / "a.wav", rate=2_000)
    with pytest.raises(FileError, match=r"yes/a.wav: sample rate 2000 Hz is too low"):
        load(tmp_path / "wav", LabelMap())
    (tmp_path / "wav" / "yes" / "a.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(FileError, match=r"yes/a.wav: not a readable WAV file"):
        load(tmp_path / "wav", LabelMap())


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "npz", "npy", "hf"])
def test_export_round_trips_digits_exactly(tmp_path, fmt, digits):
    assert main(["export", "digits", str(tmp_path / "out"), "--format", fmt]) == 0
    files, built_in = load_stream(tmp_path / "out"), class_incremental(digits, 5)
    for ours, theirs in zip(files, built_in, strict=True):
        assert torch.equal(ours.x_train.flatten(1), theirs.x_train.flatten(1))
        assert torch.equal(ours.y_train, theirs.y_train) and torch.equal(ours.y_test, theirs.y_test)
    assert files.metadata["new_classes"][1] == ["2", "3"] and files.scenario == "class_incremental"


def test_export_round_trips_fashion_images_and_refuses_lossy_png(tmp_path, capsys):
    args = ["--format", "images", "--max-train-per-class", "6", "--max-test-per-class", "3"]
    assert main(["export", "fashion_mnist", str(tmp_path / "img"), *args]) == 0
    stream = load_stream(tmp_path / "img")
    assert stream[0].x_train.shape == (12, 1, 28, 28) and stream.class_names[:2] == ["t-shirt", "trouser"]
    assert main(["export", "digits", str(tmp_path / "digits"), "--format", "images"]) == 2
    assert "not whole steps of 1/255" in capsys.readouterr().err


def test_a_run_on_exported_files_scores_as_the_built_in_run(tmp_path):
    assert main(["export", "digits", str(tmp_path / "csv"), "--format", "csv"]) == 0
    base = {"model": {"hidden": [32]}, "training": {"epochs": 1}, "seeds": [0],
            "strategies": ["finetune", {"name": "replay", "memory_size": 60}]}
    accs = {}
    for name, scenario in (("built-in", {"dataset": "digits"}), ("files", {"dataset": "files",
                                                                         "path": str(tmp_path / "csv")})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(base | {"scenario": scenario}))
        assert main(["run", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--quiet"]) == 0
        results = json.loads((tmp_path / name / "results.json").read_text())
        accs[name] = {k: m["summary"]["matrix"] for k, m in results["methods"].items()}
    assert accs["files"] == accs["built-in"]
    stream = json.loads((tmp_path / "files" / "results.json").read_text())["stream"]
    assert [e["new_classes"] for e in stream["experiences"]] == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"],
                                                                 ["8", "9"]]
    assert "batch 1: 2, 3" in (tmp_path / "files" / "report.md").read_text()
    assert stream["read_as"] == "64 feature columns (f00, f01, f02, ...), labels from 'label'"


def test_a_saved_model_keeps_its_label_names(tmp_path):
    from retain import Learner
    from retain.build import build_learner, build_stream
    from retain.config import RunConfig

    assert main(["export", "fashion_mnist", str(tmp_path / "img"), "--format", "images", "--max-train-per-class",
                 "4", "--max-test-per-class", "2"]) == 0
    cfg = RunConfig.model_validate({"scenario": {"dataset": "files", "path": str(tmp_path / "img")},
                                    "model": {"hidden": [16]}, "strategies": ["replay"]})
    stream = build_stream(cfg)
    learner = build_learner(stream, cfg, cfg.strategies[0], 0).fit(stream[0])
    loaded = Learner.load(learner.save(tmp_path / "model"), device="cpu")
    assert loaded.class_names_[:3] == ["t-shirt", "trouser", "pullover"] and len(loaded.class_names_) == 10


def test_a_task_column_is_read_as_task_ids(tmp_path):
    assert main(["export", "digits", str(tmp_path / "t"), "--format", "csv", "--kind", "task_incremental"]) == 0
    stream = load_stream(tmp_path / "t")
    assert stream.scenario == "task_incremental" and stream[0].x_train.shape[1] == 64
    assert [int(e.train_tasks().unique()) for e in stream] == [0, 1, 2, 3, 4]


def test_every_file_of_a_stream_is_read_with_the_first_ones_columns(tmp_path):
    for batch, header, rows in (("0", "a,b,label", "1,2,x\n3,4,y\n"), ("1", "label,b,a", "x,20,10\ny,40,30\n")):
        (tmp_path / batch).mkdir()
        for split in ("train", "test"):
            (tmp_path / batch / f"{split}.csv").write_text(f"{header}\n{rows}")
    stream = load_stream(tmp_path)
    assert stream[1].x_train.tolist() == [[10, 20], [30, 40]]  # a, b as in the first file, whatever the order
    (tmp_path / "1" / "test.csv").write_text("label,b\nx,1\n")
    with pytest.raises(FileError, match=r"1/test.csv: no column 'a'"):
        load_stream(tmp_path)


def test_whole_number_labels_are_their_own_ids(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,7\n2,3\n")
    labels = LabelMap()
    assert load_table(path, labels).y.tolist() == [7, 3] and len(labels.names) == 8


def test_a_files_scenario_refuses_settings_that_cut_a_stream(tmp_path):
    from retain.config import ConfigError, load_config

    assert main(["export", "digits", str(tmp_path / "csv"), "--format", "csv"]) == 0
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"scenario": {"dataset": "files", "path": str(tmp_path / "csv"),
                                                 "n_experiences": 3}, "strategies": ["replay"]}))
    with pytest.raises(ConfigError, match="n_experiences: your files are already cut into batches"):
        load_config(path)
