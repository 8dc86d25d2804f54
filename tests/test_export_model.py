"""`retain export-model`: a version as one file that a fresh process predicts with, importing only torch (TorchScript)
or only onnxruntime and numpy (ONNX), as `retain predict` does."""

import argparse
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from retain.cli.errors import Reported
from retain.cli.export_model import export_model as export_command
from retain.config import RunConfig
from retain.export_model import ExportError, WordPiece, bert_forms, export_model, exported_meta
from retain.loop import Project

from .conftest import loop_store

# Run in a fresh interpreter: reads the inputs (a table by the column names the file keeps, texts, or an array),
# predicts, and writes the probabilities and label names; it fails if anything of retain was imported.
TORCH_RUNNER = """
import csv, json, sys
import numpy as np
import torch
model_path, inputs, out = sys.argv[1:4]
extra = {"retain.json": ""}
model = torch.jit.load(model_path, _extra_files=extra)
if inputs.endswith(".csv"):
    with open(inputs) as f:
        rows = list(csv.DictReader(f))
    x = torch.tensor([[float(r[c]) for c in model.columns] for r in rows])
elif inputs.endswith(".json"):
    x = json.load(open(inputs))
else:
    x = torch.from_numpy(np.load(inputs))
p = model(x)
assert not any(m.split(".")[0] == "retain" for m in sys.modules), "retain was imported"
json.dump({"p": p.tolist(), "labels": list(model.labels), "meta": json.loads(extra["retain.json"])}, open(out, "w"))
"""
ONNX_RUNNER = """
import csv, json, sys
import numpy as np
import onnxruntime
model_path, inputs, out = sys.argv[1:4]
session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
if inputs.endswith(".csv"):
    with open(inputs) as f:
        rows = list(csv.DictReader(f))
    x = np.array([[float(r[c]) for c in json.loads(meta["columns"])] for r in rows], dtype=np.float32)
else:
    x = np.load(inputs)
p = session.run(["probabilities"], {session.get_inputs()[0].name: x})[0]
assert not any(m.split(".")[0] in ("retain", "torch") for m in sys.modules), "retain or torch was imported"
json.dump({"p": p.tolist(), "labels": json.loads(meta["labels"]), "meta": json.loads(meta["retain"])}, open(out, "w"))
"""


def predict_elsewhere(tmp_path, model, inputs, fmt):
    """The probabilities and label names the exported ``model`` gives for ``inputs`` in a fresh process."""
    out = tmp_path / f"{model.name}.out.json"
    runner = TORCH_RUNNER if fmt == "torchscript" else ONNX_RUNNER
    subprocess.run([sys.executable, "-c", runner, str(model), str(inputs), str(out)], check=True, cwd=tmp_path,
                   timeout=120)
    got = json.loads(out.read_text())
    return np.array(got["p"]), got["labels"], got["meta"]


def assert_matches_predict(store, data, probabilities, labels, files=None):
    """``Project.predict`` on ``data`` (what `retain predict` prints): the same label for every row (``files``: the
    rows' files, in the order of ``probabilities``), and probabilities equal to its six decimals."""
    predictions = Project(store).predict(data, top_k=len(labels))
    if files is not None:
        by_file = {p.row: p for p in predictions}
        predictions = [by_file[f] for f in files]
    expected = np.array([[dict(p.top)[name] for name in labels] for p in predictions])
    assert [labels[i] for i in probabilities.argmax(1)] == [p.label for p in predictions]
    assert np.abs(probabilities - expected).max() < 2e-6


def make_store(folder, data, model, files=None, strategies=("finetune",)):
    config = RunConfig.for_loop({"scenario": {"dataset": "files", "files": files or {}},
                                 "model": model | {"feature_cache": None},
                                 "training": {"epochs": 3, "lr": 0.05, "batch_size": 16},
                                 "gate": {"label_issues": False}, "strategies": list(strategies)})
    _, result = Project.init(config, data, folder)
    assert result.promoted
    return folder


@pytest.fixture(scope="module")
def table_store(batches, tmp_path_factory):
    return loop_store(tmp_path_factory.mktemp("table"), batches)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_table_store_predicts_the_same_from_its_file_alone(table_store, batches, tmp_path, fmt):
    rows = tmp_path / "rows.csv"  # a few rows, columns shuffled and no label: read by name, as retain predict does
    with open(batches / "01" / "test.csv") as f:
        records = list(csv.DictReader(f))[:12]
    columns = [c for c in records[0] if c != "label"][::-1]
    with open(rows, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    out = export_model(table_store, tmp_path / f"model.{fmt}", fmt)
    probabilities, labels, meta = predict_elsewhere(tmp_path, out, rows, fmt)
    assert labels == ["0", "1"] and meta["version"] == 1 and meta["columns"] == columns[::-1]
    assert_matches_predict(table_store, rows, probabilities, labels)


def test_the_command_says_what_the_file_takes_and_refuses_in_one_line(table_store, tmp_path, capsys):
    args = argparse.Namespace(store=str(table_store), version=None, format="torchscript", out=str(tmp_path / "m.pt"))
    assert export_command(args) == 0
    said = capsys.readouterr().out
    assert "features: float32 (N, 64) in the store's column order: f00, f01, f02" in said
    assert "probabilities: float32 (N, classes), a column per label: 0, 1" in said
    assert exported_meta(tmp_path / "m.pt")["labels"] == ["0", "1"]
    with pytest.raises(Reported):
        export_command(argparse.Namespace(store=str(table_store), version=7, format="torchscript",
                                          out=str(tmp_path / "m7.pt")))
    assert "version 7" in capsys.readouterr().err and not (tmp_path / "m7.pt").exists()


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    words = {"fruit": "apple banana pear", "colour": "red blue green", "animal": "cat dog horse"}
    with open(folder / "texts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([f"{w.split()[i % 3]} and {w.split()[(i + 1) % 3]}, row {i}", label]
                         for i in range(10) for label, w in words.items())
    return make_store(folder / "store", folder / "texts.csv", {"backbone": "minilm", "hidden": [16]})


def test_a_text_store_predicts_from_raw_strings_with_torch_alone(text_store, tmp_path):
    """MiniLM (frozen) inside the file, and its tokenizer: strings in, probabilities out."""
    texts = ["An apple, a PEAR!", "Blue-green horses", "café déjà vu", "[MASK] dog", "", "x" * 300,
             "green " * 100, "日本の犬 and a 🐱"]
    out = export_model(text_store, tmp_path / "text.pt", "torchscript")
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    probabilities, labels, meta = predict_elsewhere(tmp_path, out, tmp_path / "texts.json", "torchscript")
    assert sorted(labels) == ["animal", "colour", "fruit"] and "a list of strings" in meta["input"]
    with open(tmp_path / "texts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in texts[:4] + texts[5:]]])  # a table has no empty field
    assert_matches_predict(text_store, tmp_path / "texts.csv", np.delete(probabilities, 4, axis=0), labels)


def test_a_text_store_is_refused_for_onnx_pointing_at_torchscript(text_store, tmp_path):
    with pytest.raises(ExportError, match="ONNX has no operator for its WordPiece tokenizer.*--format torchscript"):
        export_model(text_store, tmp_path / "text.onnx", "onnx")
    assert not list(tmp_path.iterdir())


def test_the_file_tokenises_as_the_store_does():
    from retain.data.tokens import tokenize, tokenizer

    texts = ["Hello, World!", "Café déjà vu — naïve résumé", "ÀÉÎÕÜ ß Ǆ İstanbul ΣΊΣΥΦΟΣ", "中文字符 and 日本語",
             "한국어 텍스트", "emoji 😀 👍🏽", "tabs\tand\nnewlines\r\x0bvt\x0cff\x85nel", "a[MASK]b [CLS] x[SEP]",
             "don't stop-me now... 3.14 $5 #hash @at", "  ", "", "x" * 150 + " y", "supercalifragilisticexpialidocious",
             "word " * 80, "e\u0301 \u200b zero\u200dwidth \ufeffbom", "Ελληνικά Кириллица عربى עברית हिन्दी ไทย",
             "ﬁ ① ＦＵＬＬ ｗｉｄｔｈ", "\U0001d400 math", "\ue000private\U000f0000", "\u3000“double” «guillemets»…"]
    pieces = torch.jit.script(WordPiece(tokenizer().get_vocab(), 64, bert_forms()))
    assert torch.equal(pieces(texts), tokenize(texts))


def _images(folder, rng, n, size=12):
    """``n`` RGB images of each of three colours, noisy, as PNG files; and their decoded pixels."""
    from PIL import Image

    decoded = {}
    for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(n):
            pixels = (rng.random((size, size, 3)) * 80 + np.array(colour) * 0.6).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"c{c}" / f"{i}.png")
            decoded[f"c{c}/{i}.png"] = pixels
    return decoded


@pytest.fixture(scope="module")
def image_stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    _images(folder / "train", np.random.default_rng(0), 8)
    return {"cnn": make_store(folder / "cnn", folder / "train", {"name": "cnn"}),
            "frozen": make_store(folder / "frozen", folder / "train", {"backbone": "efficientnet_lite0_random",
                                                                        "image_size": 32, "hidden": [16]},
                                 {"channels": 1})}


@pytest.mark.parametrize(("model", "fmt"), [("cnn", "torchscript"), ("cnn", "onnx"), ("frozen", "torchscript"),
                                            ("frozen", "onnx")])
def test_an_image_store_predicts_from_decoded_pixels(image_stores, tmp_path, model, fmt):
    """RGB pixels as a decoder gives them; the grey store ("frozen", an EfficientNet's features) makes them grey
    inside its TorchScript file as its reader does, and its ONNX file takes them grey."""
    store = image_stores[model]
    decoded = _images(tmp_path / "new", np.random.default_rng(1), 2)
    pixels = np.stack(list(decoded.values()))
    if model == "frozen" and fmt == "onnx":
        from PIL import Image

        pixels = np.stack([np.asarray(Image.fromarray(p).convert("L"))[:, :, None] for p in pixels])
    np.save(tmp_path / "pixels.npy", pixels)
    out = export_model(store, tmp_path / f"model.{fmt}", fmt)
    probabilities, labels, _ = predict_elsewhere(tmp_path, out, tmp_path / "pixels.npy", fmt)
    assert labels == ["c0", "c1", "c2"]
    assert_matches_predict(store, tmp_path / "new", probabilities, labels, list(decoded))


@pytest.fixture(scope="module")
def audio_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audio")
    _clips(folder / "train", np.random.default_rng(0), 8, 4000)
    return make_store(folder / "store", folder / "train", {"backbone": "logmel", "name": "audio_cnn"},
                      {"seconds": 0.25})


def _clips(folder, rng, n, samples):
    """``n`` noisy tones of each of three pitches as float WAV clips at 16 kHz; and their waveforms by file."""
    from scipy.io import wavfile

    waves = {}
    for c, pitch in enumerate([300, 1200, 3000]):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(n):
            t = np.arange(samples) / 16_000
            wave = (0.5 * np.sin(2 * np.pi * pitch * t + i) + 0.05 * rng.standard_normal(samples)).astype(np.float32)
            wavfile.write(folder / f"c{c}" / f"{i}.wav", 16_000, wave)
            waves[f"c{c}/{i}.wav"] = wave
    return waves


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_audio_store_predicts_from_waveforms(audio_store, tmp_path, fmt):
    """Clips of 0.3 s for a store of 0.25 s clips: cut inside the TorchScript file, as the reader does; the ONNX
    file takes the store's length."""
    clips = _clips(tmp_path / "new", np.random.default_rng(1), 2, 4800)
    waves = np.stack(list(clips.values()))
    np.save(tmp_path / "waves.npy", waves if fmt == "torchscript" else waves[:, :4000])
    out = export_model(audio_store, tmp_path / f"model.{fmt}", fmt)
    probabilities, labels, meta = predict_elsewhere(tmp_path, out, tmp_path / "waves.npy", fmt)
    assert labels == ["c0", "c1", "c2"] and "at 16000 Hz" in meta["input"]
    assert_matches_predict(audio_store, tmp_path / "new", probabilities, labels, list(clips))


def test_a_version_whose_forward_a_strategy_changed_is_exported_as_it_predicts(batches, tmp_path):
    """iCaRL predicts by the nearest mean of exemplars, not by its trained head: the file does too."""
    store = loop_store(tmp_path, batches, strategies=[{"name": "icarl", "memory_size": 50}])
    out = export_model(store, tmp_path / "icarl.pt", "torchscript")
    rows = batches / "01" / "test.csv"
    probabilities, labels, meta = predict_elsewhere(tmp_path, out, rows, "torchscript")
    assert labels == ["0", "1"] and "icarl" in meta["strategies"]
    nme = Project(store).store.load(1, device="cpu").model.head
    assert type(nme).__name__ == "NMEHead" and bool(nme.has_mean.all())
    assert_matches_predict(store, rows, probabilities, labels)


def test_a_version_that_routes_rows_is_refused_naming_its_strategy(text_store, tmp_path):
    """LoRA experts pick an adapter per row by its nearest prototype, switching PEFT adapters in Python: refused."""
    data = Project(text_store).store.versions()[0].batches[0].source
    store = make_store(tmp_path / "store", data, {"backbone": "tiny_text", "adaptation": "lora", "hidden": []},
                       strategies=["lora_experts"])
    with pytest.raises(ExportError, match=r"per-experience LoRA adapters .*\(strategy lora_experts\)"):
        export_model(store, tmp_path / "experts.pt", "torchscript")
    assert not (tmp_path / "experts.pt").exists()


def test_a_text_store_whose_encoder_trains_with_lora_is_exported(text_store, tmp_path):
    data = Project(text_store).store.versions()[0].batches[0].source
    store = make_store(tmp_path / "store", data, {"backbone": "tiny_text", "adaptation": "lora", "hidden": []})
    texts = ["An apple, a PEAR!", "Blue-green horses", "cat"]
    out = export_model(store, tmp_path / "lora.pt", "torchscript")
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    probabilities, labels, _ = predict_elsewhere(tmp_path, out, tmp_path / "texts.json", "torchscript")
    with open(tmp_path / "texts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *[[t] for t in texts]])
    assert_matches_predict(store, tmp_path / "texts.csv", probabilities, labels)
