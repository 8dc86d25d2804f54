"""Whisper tiny.en from CTranslate2 weights: the reader, the conversion, features, greedy decoding, the cache."""

import re
import struct

import jiwer
import pytest
import soundfile as sf
import torch

from retain.data.tokens import transformers_offline
from retain.models import whisper as W

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-"


def _utterance(number: str) -> tuple:
    """A LibriVox clip (16 kHz) and its reference transcript from the folder's ``transcription`` file."""
    wave, rate = sf.read(f"{LIBRIVOX}{number}.wav", dtype="float32")
    assert rate == W.SAMPLE_RATE
    with open(LIBRIVOX.rsplit("/", 1)[0] + "/transcription") as f:
        line = next(line for line in f if line.rstrip().endswith(f"-{number})"))
    return wave, re.match(r"<s> (.*) </s>", line).group(1)


def _wer(reference: str, text: str) -> float:
    return jiwer.wer(reference, " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split()))


def _name(text: str) -> bytes:
    return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh retain cache for this module: the first load converts, later ones read the cache."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("cache")
        patch.setenv("RETAIN_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def variables():
    return W.read_ctranslate2(W.whisper_folder() / "model.bin")


@pytest.fixture(scope="module")
def model(cache):
    return W.load_whisper()


def test_every_variable_placed_with_transformers_shapes(variables):
    assert len(variables) == 148 + 1  # 148 stored variables and one alias (the output projection)
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]
    state = W.whisper_state_dict(variables)
    with torch.device("meta"):
        reference = transformers_offline().WhisperForConditionalGeneration(W.whisper_config(variables))
    expected = reference.state_dict()
    assert set(state) == set(expected) and len(state) == 168
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert {v.dtype for v in state.values()} == {torch.float32}
    assert state["proj_out.weight"] is state["model.decoder.embed_tokens.weight"]
    missing, unexpected = reference.load_state_dict(state, strict=False, assign=True)
    assert (missing, unexpected) == ([], [])
    # the fused [q; k; v] projection splits by rows, in that order
    fused = variables["encoder/layer_2/self_attention/linear_0/weight"].float()
    assert torch.equal(state["model.encoder.layers.2.self_attn.v_proj.weight"], fused[768:])


def test_conversion_names_what_does_not_fit(variables):
    with pytest.raises(ValueError, match="left unplaced: encoder/extra/weight"):
        W.whisper_state_dict({**variables, "encoder/extra/weight": torch.zeros(2)})
    cut = {**variables, "decoder/layer_1/ffn/linear_1/bias": torch.zeros(383, dtype=torch.float16)}
    with pytest.raises(ValueError, match=r"linear_1/bias -> model.decoder.layers.1.fc2.bias \[383\].*\[384\]"):
        W.whisper_state_dict(cut)
    with pytest.raises(ValueError, match="decoder/pre_norm is 0"):
        W.whisper_state_dict({**variables, "decoder/pre_norm": torch.tensor(0, dtype=torch.int8)})


def test_reader_reads_the_layout_and_refuses_other_files(tmp_path):
    path = tmp_path / "model.bin"
    values = torch.tensor([[1.5, -2.0, 0.25], [3.0, 4.0, -0.5]], dtype=torch.float16)
    path.write_bytes(struct.pack("<I", 6) + _name("TinySpec") + struct.pack("<II", 1, 2)
                     + _name("a/weight") + struct.pack("<BIIBI", 2, 2, 3, 4, 12) + values.numpy().tobytes()
                     + _name("a/scale") + struct.pack("<BBI", 0, 1, 1) + b"\x07"
                     + struct.pack("<I", 1) + _name("b/weight") + _name("a/weight"))
    read = W.read_ctranslate2(path)
    assert torch.equal(read["a/weight"], values) and read["b/weight"] is read["a/weight"]
    assert read["a/scale"].dtype == torch.int8 and int(read["a/scale"]) == 7
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(ValueError, match=r"model.bin: not a CTranslate2 model \(binary version"):
        W.read_ctranslate2(path)
    path.write_bytes(struct.pack("<I", 6) + _name("TinySpec") + struct.pack("<II", 1, 1) + _name("a/weight")
                     + struct.pack("<BIIBI", 2, 2, 3, 4, 12) + b"\0" * 5)
    with pytest.raises(ValueError, match="model.bin: variable a/weight runs past the end of the file"):
        W.read_ctranslate2(path)


def test_transcribes_a_librivox_utterance(model):
    wave, reference = _utterance("0890")  # 5.3 s, 14 words; measured WER 0 with the 30 s window
    assert sum(p.numel() for p in model.parameters()) == 37_760_256 and not model.training
    ids = W.greedy_decode(model, W.log_mel([wave]))
    assert ids[0] and W.EOT_ID not in ids[0]
    assert _wer(reference, W.decode_text(W.whisper_tokenizer(), ids[0])) <= 1 / 14  # at most one word wrong


def test_log_mel_refuses_a_clip_longer_than_its_window():
    wave, _ = _utterance("0870")  # 7.1 s
    assert W.log_mel([wave[:16_000], wave], max_seconds=10.0).shape == (2, 80, 1000)
    with pytest.raises(ValueError, match=r"waveforms\[1\]: 7.10 s \(113600 samples\) is longer than the 5 s"):
        W.log_mel([wave[:16_000], wave], max_seconds=5.0)


def test_shorter_window_loads_and_decodes(model, cache):
    short = W.load_whisper(max_seconds=10.0)
    assert short.config.max_source_positions == 500
    assert torch.equal(short.model.encoder.embed_positions.weight,
                       model.model.encoder.embed_positions.weight[:500])
    wave, reference = _utterance("0930")  # 3.3 s, 8 words; measured WER 0 with 30, 20, 15 and 10 s windows
    features = W.log_mel([wave], max_seconds=10.0)
    assert features.shape == (1, 80, 1000)
    text = W.decode_text(W.whisper_tokenizer(), W.greedy_decode(short, features)[0])
    assert _wer(reference, text) <= 1 / 8  # at most one word wrong
    with pytest.raises(ValueError, match="expects the mel input features to be of length 1000"):
        W.greedy_decode(short, W.log_mel([wave]))
    for bad in (0.0, 31.0, 10.01):
        with pytest.raises(ValueError, match=f"max_seconds={bad}"):
            W.load_whisper(bad)


def test_cache_is_reused_and_a_corrupt_one_rebuilt(model, cache):
    path = cache / "whisper" / "tiny.en.safetensors"
    stamp = path.stat().st_mtime_ns
    W.load_whisper(20.0)
    assert path.stat().st_mtime_ns == stamp  # read, not rewritten
    path.write_bytes(b"\0" * 64)
    rebuilt = W.load_whisper()
    assert path.stat().st_size > 100_000_000
    before, after = model.state_dict(), rebuilt.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
