"""Speech data: audio files read and bounded, transcript tables, LibriVox recordings, the vocabulary stream."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from retain.data import speech
from retain.data.files import FileError
from retain.data.speech import (
    NEW_VOICES,
    SAMPLE_RATE,
    librivox,
    read_audio,
    read_audio_bytes,
    transcript_table,
    vocabulary_stream,
)

BALL = "/usr/share/ktuberling/sounds/en/ball.ogg"


def _sine(hz: float, rate: int, seconds: float) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def _peak_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_reads_ktuberling_ogg_as_16k_mono():
    clip = read_audio(BALL)  # a 44.1 kHz stereo Vorbis file of 47,104 frames
    assert clip.dtype == np.float32 and clip.ndim == 1
    assert abs(len(clip) - 47104 * SAMPLE_RATE / 44100) <= 1
    assert 0.05 < np.abs(clip).max() <= 1.0


def test_resampling_keeps_a_sines_frequency_and_stereo_is_averaged(tmp_path):
    left = _sine(1000, 44100, 1.0)
    sf.write(tmp_path / "tone.wav", np.stack([left, np.zeros_like(left)], axis=1), 44100)
    clip = read_audio(tmp_path / "tone.wav")
    assert len(clip) == SAMPLE_RATE
    assert _peak_hz(clip) == 1000.0
    assert abs(np.abs(clip[1000:-1000]).max() - 0.25) < 0.01  # the silent channel halves the amplitude
    sf.write(tmp_path / "tone.flac", _sine(440, 8000, 0.5), 8000)
    assert _peak_hz(read_audio(tmp_path / "tone.flac")) == 440.0


def test_wav_bytes_of_a_request_body():
    body = io.BytesIO()
    sf.write(body, _sine(500, SAMPLE_RATE, 0.5), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    clip = read_audio_bytes(body.getvalue(), "the body")
    assert len(clip) == 8000 and _peak_hz(clip) == 500.0
    with pytest.raises(FileError, match=r"the body: 0\.5 s long; clips of at most 0\.25 s are read"):
        read_audio_bytes(body.getvalue(), "the body", max_seconds=0.25)


def test_raw_file(tmp_path):
    tone = (_sine(500, SAMPLE_RATE, 0.25) * 32767).astype("<i2")
    (tmp_path / "tone.raw").write_bytes(tone.tobytes())
    clip = read_audio(tmp_path / "tone.raw")
    assert len(clip) == 4000 and np.allclose(clip, tone / 32768, atol=1e-4)


def test_refusals_name_the_file_and_what_is_allowed(tmp_path, monkeypatch):
    sf.write(tmp_path / "long.wav", np.zeros(3 * SAMPLE_RATE), SAMPLE_RATE)
    with pytest.raises(FileError, match=r"long\.wav: 3\.0 s long; clips of at most 2 s are read"):
        read_audio(tmp_path / "long.wav", max_seconds=2)
    with pytest.raises(FileError, match=r"missing\.wav: no such file"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(FileError, match=r"empty\.wav: empty file"):
        read_audio(tmp_path / "empty.wav")
    sf.write(tmp_path / "silent.wav", np.zeros(0), SAMPLE_RATE)
    with pytest.raises(FileError, match=r"silent\.wav: empty audio \(no samples\)"):
        read_audio(tmp_path / "silent.wav")
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(FileError, match=r"text\.wav: not readable audio .*; WAV, OGG, FLAC and raw 16-bit PCM"):
        read_audio(tmp_path / "text.wav")
    (tmp_path / "song.mp3").write_bytes(b"ID3")
    with pytest.raises(FileError, match=r"song\.mp3: extension '\.mp3'; audio files \.wav, \.ogg, \.flac, \.raw"):
        read_audio(tmp_path / "song.mp3")
    monkeypatch.setattr(speech, "MAX_BYTES", 1000)
    with pytest.raises(FileError, match=r"long\.wav: 96,044 bytes; audio files of at most 1,000 bytes are read"):
        read_audio(tmp_path / "long.wav")
    with pytest.raises(FileError, match=r"the body: empty"):
        read_audio_bytes(b"", "the body")


def _clips(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        sf.write(folder / name, _sine(300, SAMPLE_RATE, 0.1), SAMPLE_RATE)


def test_transcript_table_from_csv_jsonl_and_folder(tmp_path):
    _clips(tmp_path / "clips", ["a.wav", "b.wav"])
    (tmp_path / "batch.csv").write_text("path,text\nclips/a.wav,hello there\nclips/b.wav,  open   kubectl \n")
    expected = [(tmp_path / "clips" / "a.wav", "hello there"), (tmp_path / "clips" / "b.wav", "open kubectl")]
    assert transcript_table(tmp_path / "batch.csv") == expected
    (tmp_path / "batch.jsonl").write_text("\n".join(json.dumps({"path": f"clips/{n}.wav", "text": t})
                                                    for n, t in (("a", "hello there"), ("b", "open kubectl"))))
    assert transcript_table(tmp_path / "batch.jsonl") == expected
    for name, text in (("a", "hello there"), ("b", "open kubectl")):
        (tmp_path / "clips" / f"{name}.txt").write_text(text + "\n")
    assert transcript_table(tmp_path / "clips") == expected


def test_transcript_table_refusals(tmp_path):
    _clips(tmp_path / "clips", ["a.wav"])
    cases = {
        "path\nclips/a.wav\n": r"no column 'text' \(columns: path; path and text are expected\)",
        "path,text\nclips/b.wav,hi\n": r"row 2: field 'path': no clip 'clips/b.wav'",
        "path,text\nclips/a.mp3,hi\n": r"row 2: field 'path': 'clips/a.mp3' has extension '\.mp3'; clips \.wav",
        "path,text\n": r"no rows",
    }
    for number, (content, message) in enumerate(cases.items()):
        table = tmp_path / f"t{number}.csv"
        table.write_text(content)
        with pytest.raises(FileError, match=f"t{number}\\.csv: {message}"):
            transcript_table(table)
    clips = tmp_path / "clips"
    with pytest.raises(FileError, match=r"a\.wav: no transcript a\.txt beside it"):
        transcript_table(clips)
    (clips / "a.txt").write_text("  \n")  # read as empty: the gate flags it, the batch's other clips are learned
    assert transcript_table(clips) == [(clips / "a.wav", "")]
    (tmp_path / "empty.csv").write_text("path,text\nclips/a.wav,\n")
    assert transcript_table(tmp_path / "empty.csv") == [(clips / "a.wav", "")]
    (clips / "a.txt").write_text("fine")
    (clips / "c.txt").write_text("orphan")
    with pytest.raises(FileError, match=r"c\.txt: a transcript without a clip of the same name"):
        transcript_table(clips)
    (clips / "c.txt").unlink()
    (clips / "notes.md").write_text("#")
    with pytest.raises(FileError, match=r"notes\.md: extension '\.md'; a folder of clips holds \.wav"):
        transcript_table(clips)
    with pytest.raises(FileError, match=r"a\.wav: extension '\.wav'; a table \(\.csv, \.tsv, \.jsonl\)"):
        transcript_table(clips / "a.wav")
    with pytest.raises(FileError, match=r"nothing: no such file or folder"):
        transcript_table(tmp_path / "nothing")


def test_unlabelled_inputs_need_no_text(tmp_path):
    _clips(tmp_path, ["x1.wav", "x2.wav"])
    assert transcript_table(tmp_path / "x1.wav", labelled=False) == [(tmp_path / "x1.wav", None)]
    assert transcript_table(tmp_path, labelled=False) == [(tmp_path / "x1.wav", None), (tmp_path / "x2.wav", None)]
    (tmp_path / "in.csv").write_text("path\nx2.wav\n")
    assert transcript_table(tmp_path / "in.csv", labelled=False) == [(tmp_path / "x2.wav", None)]


def test_librivox_transcripts():
    recordings = librivox()
    assert len(recordings) == 5
    assert recordings[0].text.startswith("and mr john dashwood had then leisure")
    assert recordings[4].text == "he might even have been made amiable himself"
    assert all(2.5 < len(u.audio) / SAMPLE_RATE < 7.5 for u in recordings)


def test_missing_package_names_it(monkeypatch, tmp_path):
    monkeypatch.setattr(speech, "PCSPHINX", tmp_path)
    with pytest.raises(speech.DatasetNotFound, match="apt-get install pocketsphinx-testdata"):
        librivox()


def _tiny(monkeypatch, cache):
    monkeypatch.setenv("RETAIN_CACHE", str(cache))
    return vocabulary_stream(seed=3, progress=False, train_per_experience=2, test_per_experience=1, general=1)


def test_tiny_vocabulary_stream(monkeypatch, tmp_path):
    stream = _tiny(monkeypatch, tmp_path / "a")
    again = _tiny(monkeypatch, tmp_path / "b")  # generated afresh in another cache
    cached = _tiny(monkeypatch, tmp_path / "a")
    utterances = [u for e in stream.experiences for u in e.train + e.test] + stream.retention["general"]
    for other in (again, cached):
        others = [u for e in other.experiences for u in e.train + e.test] + other.retention["general"]
        assert [(u.text, u.voice) for u in utterances] == [(u.text, u.voice) for u in others]
        assert all(np.array_equal(u.audio, o.audio) for u, o in zip(utterances, others, strict=True))
    assert [e.name for e in stream.experiences] == [*speech.CHOSEN, "voices"]
    trained = {u.voice for e in stream.experiences for u in e.train}
    tested = {u.voice for e in stream.experiences for u in e.test} | {u.voice for u in stream.retention["general"]}
    assert not trained & tested
    assert all(u.voice in NEW_VOICES for u in stream.experiences[-1].train + stream.experiences[-1].test)
    for experience in stream.experiences[:3]:
        assert len(experience.new_words) == 2
        for u in experience.train + experience.test:
            assert set(u.text.split()) & set(experience.new_words)
        assert {w for u in experience.train for w in u.text.split()} >= set(experience.new_words)
        assert not {u.text for u in experience.train} & {u.text for u in experience.test}
    assert stream.retention["general"][0].text in speech.GENERAL
    assert len(stream.retention["librivox"]) == 5
    assert all(1.0 < len(u.audio) / SAMPLE_RATE < 8.0 for u in utterances)
