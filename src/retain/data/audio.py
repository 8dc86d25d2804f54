"""A spoken-keyword data set synthesised locally: 20 command words, many voices, perturbed with sox.

Source: speech synthesised on this machine by three engines from Debian's packages,
``espeak-ng`` (GPL-3), ``flite`` (BSD-like) and ``festival`` with its ``kal_diphone`` voice
(BSD-like), resampled and perturbed (tempo and pitch) by ``sox`` (GPL-2), with white noise at
a random signal-to-noise ratio added afterwards. The words are the 20 core commands of Speech
Commands (Warden 2018): zero to nine, yes, no, up, down, left, right, on, off, stop, go.

Voices: 8 espeak-ng accents x 4 voice variants, 5 flite voices and festival's voice (38).
A seeded quarter of the voices is held out: its clips are the test split, so no test voice
is ever heard in training. Each (word, voice) pair gives ``copies`` clips: the clean one and
``copies - 1`` perturbed ones. Clips are 1 s at 16 kHz, centred and zero-padded.

Generation (default 20 words x 38 voices x 4 copies = 3,040 clips) takes about a minute on
two cores; the result is cached as ``.npz`` under ``~/.cache/retain/keywords`` (or
``$RETAIN_CACHE``), keyed by every generation parameter, and reloaded in a second.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retain.data.base import Dataset, DatasetNotFound, cache_dir

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m3", "f2", "f4")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
SAMPLE_RATE = 16_000
TOOLS = {"espeak-ng": "espeak-ng", "flite": "flite", "text2wave": "festival", "sox": "sox"}


def voices() -> list[str]:
    """Every voice as ``engine:name``.

    >>> v = voices(); len(v), v[0], v[-1]
    (38, 'espeak:en-us+m1', 'festival:kal_diphone')
    """
    espeak = [f"espeak:{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    return espeak + [f"flite:{v}" for v in FLITE_VOICES] + ["festival:kal_diphone"]


def check_tools(dataset: str = "keywords") -> None:
    """Raise :class:`DatasetNotFound` naming the Debian packages to install when a synthesis tool is missing."""
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise DatasetNotFound(
            f"data set {dataset!r} synthesises speech and needs Debian's packages "
            f"{', '.join(sorted(set(missing)))}: apt-get install espeak-ng flite festival sox")


def synthesize(voice: str, text: str, out: Path) -> None:
    """Speak ``text`` (a word or a sentence) with ``voice`` (``engine:name``, as :func:`voices` names
    them) into the WAV file ``out``, at the engine's own sample rate."""
    engine, name = voice.split(":", 1)
    if engine == "espeak":
        cmd = ["espeak-ng", "-v", name, "-w", str(out), text]
        subprocess.run(cmd, check=True, capture_output=True)
    elif engine == "flite":
        subprocess.run(["flite", "-voice", name, "-t", text, "-o", str(out)], check=True, capture_output=True)
    else:
        subprocess.run(["text2wave", "-eval", f"(voice_{name})", "-o", str(out)], input=text.encode(),
                       check=True, capture_output=True)


def perturb(raw: Path, out: Path, tempo: float | None = None, pitch: float | None = None) -> np.ndarray:
    """The WAV file ``raw`` as a 16 kHz mono waveform in [-1, 1], converted by sox into ``out``, its
    tempo scaled by ``tempo`` (1.1: 10% faster) and its pitch moved by ``pitch`` cents when given."""
    effects = [] if tempo is None else ["tempo", f"{tempo:.3f}"]
    effects += [] if pitch is None else ["pitch", f"{pitch:.0f}"]
    subprocess.run(["sox", "-R", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out), *effects],
                   check=True, capture_output=True)
    with wave.open(str(out)) as w:
        frames = w.readframes(w.getnframes())
    return np.frombuffer(frames, dtype=np.int16).astype(np.float32) / 32768.0


def add_noise(audio: np.ndarray, snr: float, seed: int) -> np.ndarray:
    """``audio`` plus white noise (drawn from ``seed``) at a signal-to-noise ratio of ``snr`` dB.

    >>> clean = np.sin(np.arange(16_000, dtype=np.float32) / 10)
    >>> noise = add_noise(clean, 20.0, seed=0) - clean
    >>> round(10 * np.log10(np.mean(clean ** 2) / np.mean(noise ** 2)))
    20
    """
    power = float(np.mean(audio ** 2)) + 1e-12
    noise = np.random.default_rng(seed).standard_normal(len(audio))
    noisy: np.ndarray = audio + noise.astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    return noisy


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    """Centre ``audio`` in ``n`` samples, cropping or zero-padding evenly on both sides."""
    if len(audio) >= n:
        start = (len(audio) - n) // 2
        return audio[start:start + n]
    out = np.zeros(n, dtype=np.float32)
    start = (n - len(audio)) // 2
    out[start:start + len(audio)] = audio
    return out


def _clips(voice: str, word: str, copies: int, seed: int, workdir: Path) -> list[np.ndarray]:
    rng = random.Random(f"{seed}:{voice}:{word}")
    tag = hashlib.sha1(f"{voice}:{word}".encode()).hexdigest()[:12]
    raw, clips = workdir / f"{tag}.wav", []
    synthesize(voice, word, raw)
    for c in range(copies):
        out = workdir / f"{tag}-{c}.wav"
        if c == 0:
            audio = _fit(perturb(raw, out), SAMPLE_RATE)
        else:  # white noise at a signal-to-noise ratio between 10 and 30 dB
            tempo, pitch = rng.uniform(0.85, 1.15), rng.uniform(-250, 250)
            audio = _fit(perturb(raw, out, tempo, pitch), SAMPLE_RATE)
            snr = rng.uniform(10, 30)
            audio = add_noise(audio, snr, rng.getrandbits(32))
        clips.append(audio)
    return clips


def keywords(words: tuple[str, ...] = WORDS, copies: int = 4, test_fraction: float = 0.25, seed: int = 0,
             workers: int = 4, progress: bool = True, speakers: list[str] | None = None) -> Dataset:
    """The synthesised keyword data set: ``x`` is ``(N, 16000)`` waveforms in [-1, 1], ``y`` the word.

    Test voices never appear in training; ``metadata["voice_train"]`` / ``["voice_test"]`` name
    each clip's voice. ``speakers`` restricts the voices (default: all of :func:`voices`).
    Generated once per parameter set, then loaded from cache.
    """
    all_voices = list(speakers) if speakers is not None else voices()
    params = {"words": list(words), "voices": all_voices, "copies": copies, "test_fraction": test_fraction,
              "seed": seed, "rate": SAMPLE_RATE, "version": 3}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "keywords" / f"keywords-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test", "voice_train", "voice_test")}
            return _as_dataset(arrays, words)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: generate again below
    check_tools()
    held_out = set(random.Random(seed).sample(all_voices, round(len(all_voices) * test_fraction)))
    jobs = [(v, label, w) for v in all_voices for label, w in enumerate(words)]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_clips, v, w, copies, seed, Path(tmp)) for v, _, w in jobs]
        results = [f.result() for f in tqdm(futures, desc="synthesising keywords", unit="word",
                                             disable=not progress)]
    split: dict[str, list[Any]] = {k: [] for k in ("x_train", "y_train", "x_test", "y_test", "voice_train",
                                                   "voice_test")}
    for (voice, label, _), clips in zip(jobs, results, strict=True):
        part = "test" if voice in held_out else "train"
        split[f"x_{part}"] += clips
        split[f"y_{part}"] += [label] * len(clips)
        split[f"voice_{part}"] += [voice] * len(clips)
    dtypes = {"x": np.float16, "y": np.int64, "v": str}
    arrays = {k: np.asarray(v, dtype=dtypes[k[0]]) for k, v in split.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp.npz")
    np.savez(tmp_path, **arrays)
    tmp_path.replace(path)
    return _as_dataset(arrays, words)


def _as_dataset(arrays: dict[str, np.ndarray], words: tuple[str, ...]) -> Dataset:
    x = {k: torch.from_numpy(arrays[k].astype(np.float32)) for k in ("x_train", "x_test")}
    y = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in ("y_train", "y_test")}
    voice = {k: [str(v) for v in arrays[k]] for k in ("voice_train", "voice_test")}
    return Dataset("keywords", x["x_train"], y["y_train"], x["x_test"], y["y_test"], tuple(words), voice)
