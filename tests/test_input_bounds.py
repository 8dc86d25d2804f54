"""Inputs are bounded before they are decoded, read by column name, and never block: through the file
readers, the command line and the service."""

import base64
import io
import json
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from scipy.io import wavfile

from retain.cli import main
from retain.config import FilesConfig, ServiceConfig
from retain.data.files import MAX_PIXELS, FileError, LabelMap, load, load_table, read_image, read_wav
from retain.service.app import create_app
from retain.service.inputs import InputError, read_inputs

from .conftest import loop_store
from .test_feature_cache import audio_store


def wav_bytes(rate=16_000, seconds=0.2, channels=1):
    out = io.BytesIO()
    wave = (0.5 * np.sin(np.arange(int(rate * seconds)) / 10)).astype(np.float32)
    wavfile.write(out, rate, np.stack([wave] * channels, 1) if channels > 1 else wave)
    return out.getvalue()


def claiming_rate(rate):
    """A 2 KB WAV file whose header claims ``rate`` samples a second."""
    data = bytearray(wav_bytes(seconds=0.03))
    data[24:28], data[28:32] = struct.pack("<I", rate), struct.pack("<I", rate * 4)
    return bytes(data)


def png_header(width, height):
    """The first bytes of a grey PNG of ``width`` x ``height``: all a reader needs to learn its size."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * min(height * (width + 1), 10_000))) + chunk(b"IEND", b""))


def b64(data):
    return base64.b64encode(data).decode()


AUDIO = {"modality": "audio", "shape": [16_000]}
BAD_AUDIO = [
    (claiming_rate(4_999_999), "sample rate 4999999 Hz; clips of at most 384000 Hz are read"),
    (wav_bytes()[:30], r"not a readable WAV file \(its fmt chunk is cut short\)"),
    (wav_bytes()[:40], r"not a readable WAV file \(the header is cut short before the data chunk\)"),
    (wav_bytes(channels=2)[:22] + struct.pack("<H", 5000) + wav_bytes(channels=2)[24:], "5000 channels"),
]


@pytest.mark.parametrize("data, message", BAD_AUDIO, ids=["huge-rate", "cut-in-fmt", "cut-before-data", "channels"])
def test_a_wav_header_claiming_too_much_is_refused_before_decoding(tmp_path, data, message):
    read_wav(wav_bytes())  # imports done: what follows is the refusal alone
    start = time.perf_counter()
    with pytest.raises(FileError, match=f"audio: {message}"):
        read_wav(data)
    assert time.perf_counter() - start < 0.5
    (tmp_path / "yes").mkdir()
    (tmp_path / "yes" / "a.wav").write_bytes(data)
    with pytest.raises(FileError, match=f"yes/a.wav: {message}"):
        load(tmp_path, LabelMap())
    with pytest.raises(InputError, match=message) as refused:
        read_inputs([{"audio": b64(wav_bytes())}, {"audio": b64(data)}], AUDIO, FilesConfig())
    assert refused.value.field == "inputs.1.audio"


def test_only_the_frames_a_clip_keeps_are_read(tmp_path):
    long = wav_bytes(rate=44_100, seconds=20.0)
    data = long.index(b"data") + 8
    assert np.array_equal(read_wav(long), read_wav(long[:data + 2 * 44_100 * 4]))  # 20 s read as its first 2 s
    claims_more = long[:data - 4] + struct.pack("<I", 2**32 - 2) + long[data:data + 4 * 44_100 * 2]
    assert np.array_equal(read_wav(claims_more), read_wav(long))  # a data chunk claiming 4 GB: what is there


def test_the_service_answers_4xx_naming_the_field_for_bounded_audio(tmp_path):
    with TestClient(create_app(audio_store(tmp_path))) as api:
        for data, message in BAD_AUDIO[:2]:
            answer = api.post("/predict", json={"inputs": [{"audio": b64(data)}]})
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "inputs", 0, "audio"]
            assert message.replace("\\", "").split("(")[0] in answer.json()["detail"][0]["msg"]


@pytest.mark.parametrize("side", [12_000, 20_000])
def test_an_image_of_too_many_pixels_is_refused_from_its_header(tmp_path, side):
    read_image(png_header(8, 8))  # imports done: what follows is the refusal alone
    start = time.perf_counter()
    message = f"{side} x {side} pixels; images of at most {MAX_PIXELS:,} pixels" if side < 13_000 else "too many pixels"
    with pytest.raises(FileError, match=f"image: {message}"):
        read_image(png_header(side, side))
    assert time.perf_counter() - start < 0.5
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "big.png").write_bytes(png_header(side, side))
    with pytest.raises(FileError, match=f"cat/big.png: {message}"):
        load(tmp_path, LabelMap())
    assert read_image(png_header(8, 8)).shape == (1, 8, 8)  # a small one of the same making is read


def test_the_service_refuses_huge_images_by_field(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, shade in (("dark", 40), ("light", 215)):
        (tmp_path / "first" / label).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.clip(rng.normal(shade, 20, (8, 8)), 0, 255).astype(np.uint8)).save(
                tmp_path / "first" / label / f"{i}.png")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"model": {"hidden": [8]}, "training": {"epochs": 2},
                                                       "strategies": ["finetune"]}))
    assert main(["init", str(tmp_path / "cfg.yaml"), "--data", str(tmp_path / "first"), "--store",
                 str(tmp_path / "store"), "--json"]) == 0
    with TestClient(create_app(tmp_path / "store")) as api:
        start = time.perf_counter()
        for side in (12_000, 20_000):
            inputs = [{"image": b64(png_header(8, 8))}] + [{"image": b64(png_header(side, side))}] * 40
            answer = api.post("/predict", json={"inputs": inputs})
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "inputs", 1, "image"]
            assert "pixels" in answer.json()["detail"][0]["msg"]
        assert time.perf_counter() - start < 2


@pytest.mark.parametrize("value", ["3e38", "1e308", "1e30", "1e400", "nan"])
def test_absurd_feature_values_are_refused_naming_row_and_column(tmp_path, value):
    path = tmp_path / "d.csv"
    path.write_text(f"a,b,label\n1,2,x\n3,{value},y\n")
    with pytest.raises(FileError, match=r"d.csv: row 3: field 'b': .*(beyond ±1e\+12|NaN or infinite)"):
        load(path, LabelMap())
    np.savez(tmp_path / "d.npz", x=np.array([[1.0, 2.0], [3.0, float(value)]]), y=np.array([0, 1]))
    with pytest.raises(FileError, match=r"d.npz: row 1: field 'x' value 1: "):
        load(tmp_path / "d.npz", LabelMap())
    with pytest.raises(InputError, match="beyond|NaN or infinite") as refused:
        read_inputs([{"features": [1.0, 2.0]}, {"features": [3.0, float(value)]}],
                    {"modality": "tabular", "shape": [2]}, FilesConfig())
    assert refused.value.field == "inputs.1.features" and refused.value.message.startswith("value 1: ")
    path.write_text("a,b,label\n1,1.7e9,x\n-68719476736,4,y\n")  # Unix times and large counts are features
    assert load(path, LabelMap()).x.tolist() == [[1, 1.7e9], [-2**36, 4]]


def test_the_service_refuses_absurd_features_in_predictions_and_feedback(tmp_path, batches):
    store = loop_store(tmp_path, batches)
    with TestClient(create_app(store, ServiceConfig(poll=0.05, update_wait=3600), token="t")) as api:
        for value in (3e38, 1e308, 1e30):
            answer = api.post("/predict", json={"inputs": [{"features": [0.0] * 63 + [value]}]})
            detail = answer.json()["detail"][0]
            assert answer.status_code == 422 and detail["loc"] == ["body", "inputs", 0, "features"]
            assert detail["msg"].startswith("value 63: ")
            fed = api.post("/feedback", json={"rows": [{"input": {"features": [value] + [0.0] * 63}, "label": "0"}]},
                           headers={"Authorization": "Bearer t"})
            assert fed.status_code == 422 and fed.json()["detail"][0]["loc"] == ["body", "rows", 0, "input", "features"]
        assert api.get("/state").json()["feedback"] == {}


def test_columns_are_matched_by_name_in_any_order_and_others_are_refused(tmp_path, batches, capsys):
    first, later = tmp_path / "first.csv", tmp_path / "later.csv"
    first.write_text("a,b,c,label\n1,2,3,x\n")
    read = load_table(first, LabelMap())
    assert read.feature_columns == ["a", "b", "c"]
    later.write_text("label,c,b,a\nx,30,20,10\n")
    assert load_table(later, LabelMap(), expect_features=read.feature_columns).x.tolist() == [[10, 20, 30]]
    later.write_text("a,b,d,e,label\n1,2,3,4,x\n")
    with pytest.raises(FileError, match=r"later.csv: no column 'c'; unknown columns 'd', 'e' \(feature columns are "
                                        r"matched by name, in any order, to the 3 read first: a, b, c"):
        load_table(later, LabelMap(), expect_features=read.feature_columns)
    # a store records the names of its first batch's columns, and reads later files by them
    store = loop_store(tmp_path, batches)
    lines = (batches / "01" / "test.csv").read_text().splitlines()
    rows = [line.split(",") for line in lines]
    reversed_csv = tmp_path / "reversed.csv"
    reversed_csv.write_text("".join(",".join(row[::-1]) + "\n" for row in rows))

    capsys.readouterr()

    def predicted(path):
        assert main(["predict", str(store), "--data", str(path), "--json"]) == 0
        return [p["label"] for p in json.loads(capsys.readouterr().out)]

    assert predicted(reversed_csv) == predicted(batches / "01" / "test.csv")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("".join(",".join(["x00", *row[1:]] if i == 0 else row) + "\n" for i, row in enumerate(rows)))
    assert main(["predict", str(store), "--data", str(renamed)]) == 2
    assert "no column 'f00'; unknown column 'x00'" in capsys.readouterr().err
    assert main(["update", str(store), "--data", str(renamed)]) == 2
    assert "no column 'f00'; unknown column 'x00'" in capsys.readouterr().err


def _finishes(load_folder):
    """What ``load_folder()`` raised, if it finished within 10 s (it must not block)."""
    raised = []

    def run():
        try:
            load_folder()
        except FileError as err:
            raised.append(str(err))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading the folder blocked"
    return raised


@pytest.mark.parametrize("suffix", [".png", ".wav"])
def test_a_pipe_in_a_folder_is_refused_by_name_never_opened(tmp_path, suffix):
    (tmp_path / "cat").mkdir()
    if suffix == ".png":
        from PIL import Image

        Image.new("L", (4, 4)).save(tmp_path / "cat" / "1.png")
    else:
        (tmp_path / "cat" / "1.wav").write_bytes(wav_bytes())
    os.mkfifo(tmp_path / "cat" / f"2{suffix}")
    for labelled in (True, False):
        assert _finishes(lambda labelled=labelled: load(tmp_path, LabelMap(), labelled=labelled)) == [
            f"{tmp_path / 'cat' / f'2{suffix}'}: not a regular file (a pipe, socket, device or folder); remove it "
            "or move it away"]
    os.mkfifo(tmp_path / "train.csv")
    assert _finishes(lambda: load_table(tmp_path / "train.csv", LabelMap()))


def test_translation_predict_refuses_a_text_longer_than_the_store_translates():
    from retain.tasks.translation import Pairs, Translation

    from .test_tasks import TINY_MT

    kind = Translation(None, TINY_MT | {"corpus": {"languages": ["de"], "max_chars": 80}})  # the check needs no model
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"inputs: text 2 has 1000000 characters; this store translates texts of "
                                         r"at most 80 \(corpus.max_chars\)"):
        kind.predict(None, Pairs(["Open", "x" * 1_000_000], ["", ""], ["de", "de"]), 1)
    assert time.perf_counter() - start < 0.5
