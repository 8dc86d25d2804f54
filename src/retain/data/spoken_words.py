"""Real spoken words from KTuberling's recordings: English words as classes, or one concept set across languages.

Source: Debian's package ``ktuberling-data`` (GPL-2+), ``/usr/share/ktuberling/sounds``: for each
language a ``<lang>.soundtheme`` file names the sound of every concept (``ball``, ``pizzeria_tomato``,
...) and ``<lang>/*.ogg`` holds one recording of it, mostly one speaker per language. English has 71
concepts; 13 languages (:data:`LANGUAGES`) hold 69 of them (all but ``bow`` and ``moon_moonwalker``).

Each recording is read with ``soundfile``, mixed to mono, resampled to 16 kHz
(``scipy.signal.resample_poly``), trimmed of silence (20 ms energy 40 dB under its peak) and scaled
to a peak of 0.9. Clips are 1.5 s: the 1 s of the synthesised keyword set would crop half of the
recordings (median 0.84 s after trimming, 90th percentile 1.42 s); 1.5 s holds every English word
and crops about a tenth of the other languages' (centred). The log-mel front end and ``audio_cnn``
read any length.

Honest split. With one recording per (concept, language), training and test clips are copies of
the same recording: copy 0 is the clean recording (training); copies 1.. are perturbed like the
keyword set (sox ``tempo`` 0.85-1.15 and ``pitch`` ±250 cents, then a random shift of up to 0.25 s
and white noise at 10-30 dB SNR), and a seeded ``test_fraction`` of them is held out for testing.
A test clip is never a training clip, but it shares the speaker and the utterance with the
training clips: test accuracy measures recognition of that speaker's word under perturbation,
not of a new speaker. The domain-incremental stream (:func:`by_language`) makes each experience
a group of languages (other speakers, other words for the same concepts), tested on that group's
held-out copies; a language kept out of every group measures transfer to an unheard language.

Generation (71 English words x 40 copies, or 13 languages x 69 concepts x 8 copies) takes about
10 s / 30 s on two cores; the result is cached as ``.npz`` under ``~/.cache/retain/spoken_words``
(or ``$RETAIN_CACHE``), keyed by every parameter and the source files' names and sizes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from retain.data.base import Dataset, DatasetNotFound, cache_dir
from retain.data.experience import Experience, Stream
from retain.extras import require

SOUNDS_DIR = Path("/usr/share/ktuberling/sounds")
SAMPLE_RATE = 16_000
CLIP_SAMPLES = 24_000  # 1.5 s
# The languages whose theme holds (almost) every English concept: 69 shared concepts.
LANGUAGES = ("ca", "da", "de", "el", "en", "fr", "gl", "lt", "nn", "ru", "sl", "uk", "wa")
MAX_SHIFT = SAMPLE_RATE // 4
_SOUND = re.compile(r'<sound\s+name="([^"]+)"\s+file="([^"]+)"')


def themes(root: Path = SOUNDS_DIR) -> dict[str, dict[str, Path]]:
    """Every language's concepts and the recording of each (recordings that exist), in theme order.

    >>> t = themes(); len(t["en"]), t["en"]["ball"].name, len(t["de"])
    (71, 'ball.ogg', 71)
    """
    if not root.is_dir():
        raise DatasetNotFound(f"KTuberling's recordings not found in {root}: apt-get install ktuberling-data")
    out = {}
    for theme in sorted(root.glob("*.soundtheme")):
        sounds = {name: root / file for name, file in _SOUND.findall(theme.read_text(encoding="utf-8"))}
        found = {name: path for name, path in sounds.items() if path.is_file()}
        if found:
            out[theme.name.removesuffix(".soundtheme")] = found
    return out


def shared_concepts(languages: Sequence[str], root: Path = SOUNDS_DIR) -> tuple[str, ...]:
    """The concepts every one of ``languages`` has a recording of, in the first language's theme order.

    >>> len(shared_concepts(LANGUAGES)), len(shared_concepts(["en"]))
    (69, 71)
    """
    found = themes(root)
    unknown = [lang for lang in languages if lang not in found]
    if unknown or not languages:
        raise ValueError(f"languages: {unknown or 'none given'} not in {root}; allowed: {', '.join(found)}")
    return tuple(c for c in found[languages[0]] if all(c in found[lang] for lang in languages))


def read_recording(path: Path) -> np.ndarray:
    """One recording as mono float32 at 16 kHz, silence trimmed, peak 0.9."""
    soundfile = require("soundfile", "audio")
    from scipy.signal import resample_poly

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    g = gcd(rate, SAMPLE_RATE)
    audio = resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)
    frame = SAMPLE_RATE // 50
    energy = np.convolve(audio ** 2, np.ones(frame) / frame, mode="same")
    loud = np.nonzero(energy > energy.max() * 1e-4)[0]
    if len(loud):
        audio = audio[max(loud[0] - frame, 0):loud[-1] + frame]
    scaled: np.ndarray = audio * np.float32(0.9 / (np.abs(audio).max() + 1e-9))
    return scaled


def _place(audio: np.ndarray, n: int, shift: int) -> np.ndarray:
    """``audio`` in ``n`` samples, centred then moved by ``shift``: cropped or zero-padded."""
    start = (n - len(audio)) // 2 + shift  # where the recording starts in the clip (negative: cropped)
    out = np.zeros(n, dtype=np.float32)
    lo, hi = max(start, 0), min(start + len(audio), n)
    out[lo:hi] = audio[lo - start:hi - start]
    return out


def _perturb(audio: np.ndarray, rng: random.Random) -> np.ndarray:
    effects = ["tempo", f"{rng.uniform(0.85, 1.15):.3f}", "pitch", f"{rng.uniform(-250, 250):.0f}"]
    raw = ["-t", "f32", "-r", str(SAMPLE_RATE), "-c", "1"]
    done = subprocess.run(["sox", "-R", *raw, "-", *raw, "-", *effects], input=audio.tobytes(),
                          capture_output=True, check=True)
    out = np.frombuffer(done.stdout, dtype=np.float32)
    room = min(abs(CLIP_SAMPLES - len(out)) // 2, MAX_SHIFT)
    clip = _place(out, CLIP_SAMPLES, rng.randint(-room, room))
    power = float(np.mean(clip ** 2)) + 1e-12
    snr = rng.uniform(10, 30)
    noise = np.random.default_rng(rng.getrandbits(32)).standard_normal(CLIP_SAMPLES).astype(np.float32)
    noisy: np.ndarray = clip + noise * np.float32(np.sqrt(power / 10 ** (snr / 10)))
    return noisy


def _copies(path: Path, copies: int, n_test: int, key: str) -> tuple[list[np.ndarray], list[bool]]:
    """The clean clip and ``copies - 1`` perturbed ones; which of them are test clips (never the clean one)."""
    rng = random.Random(key)
    audio = read_recording(path)
    clips = [_place(audio, CLIP_SAMPLES, 0)] + [_perturb(audio, rng) for _ in range(copies - 1)]
    test = set(rng.sample(range(1, copies), n_test))
    return clips, [c in test for c in range(copies)]


def spoken_words(languages: Sequence[str] = ("en",), concepts: Sequence[str] | None = None, copies: int = 40,
                 test_fraction: float = 0.25, seed: int = 0, root: Path = SOUNDS_DIR, workers: int = 2,
                 progress: bool = True) -> Dataset:
    """KTuberling's recordings of ``concepts`` (default: all that every language has) in ``languages``.

    ``x`` is ``(N, 24000)`` waveforms (1.5 s at 16 kHz), ``y`` the concept; ``metadata["language_train"]``
    / ``["language_test"]`` name each clip's language. Per recording, ``copies`` clips: the clean one
    (training) and perturbed ones, ``round(copies * test_fraction)`` of them held out for testing.
    Generated once per parameter set, then loaded from cache.
    """
    if copies < 2:
        raise ValueError(f"copies must be at least 2 (one training and one test clip per recording), got {copies}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    n_test = min(max(round(copies * test_fraction), 1), copies - 1)
    found = themes(root)
    names = tuple(concepts) if concepts is not None else shared_concepts(languages, root)
    missing = [(lang, c) for lang in languages for c in names if c not in found.get(lang, {})]
    if missing:
        raise ValueError(f"concepts: no recording of {missing[0][1]!r} in language {missing[0][0]!r} under {root}")
    jobs = [(lang, label, found[lang][c]) for lang in languages for label, c in enumerate(names)]
    params = {"languages": list(languages), "concepts": list(names), "copies": copies, "n_test": n_test,
              "seed": seed, "clip": CLIP_SAMPLES, "rate": SAMPLE_RATE, "version": 1,
              "files": [(str(p), p.stat().st_size) for *_, p in jobs]}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "spoken_words" / f"spoken_words-{key}.npz"
    fields = ("x_train", "y_train", "x_test", "y_test", "language_train", "language_test")
    if path.is_file():
        try:
            with np.load(path) as z:
                return _as_dataset({k: z[k] for k in fields}, names)
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: generate again below
    if shutil.which("sox") is None:
        raise DatasetNotFound("spoken words are perturbed with sox: apt-get install sox")
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_copies, p, copies, n_test, f"{seed}:{lang}:{names[label]}") for lang, label, p in jobs]
        results = [f.result() for f in tqdm(futures, desc="perturbing spoken words", unit="word", disable=not progress)]
    split: dict[str, list[Any]] = {k: [] for k in fields}
    for (lang, label, _), (clips, is_test) in zip(jobs, results, strict=True):
        for clip, test in zip(clips, is_test, strict=True):
            part = "test" if test else "train"
            split[f"x_{part}"].append(clip)
            split[f"y_{part}"].append(label)
            split[f"language_{part}"].append(lang)
    dtypes = {"x": np.float16, "y": np.int64, "l": str}
    arrays: dict[str, Any] = {k: np.asarray(v, dtype=dtypes[k[0]]) for k, v in split.items()}  # Any: see np.savez
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp.npz")
    np.savez(tmp_path, **arrays)
    tmp_path.replace(path)
    return _as_dataset(arrays, names)


def _as_dataset(arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> Dataset:
    x = {k: torch.from_numpy(arrays[k].astype(np.float32)) for k in ("x_train", "x_test")}
    y = {k: torch.from_numpy(arrays[k].astype(np.int64)) for k in ("y_train", "y_test")}
    language = {k: [str(v) for v in arrays[k]] for k in ("language_train", "language_test")}
    return Dataset("spoken_words", x["x_train"], y["y_train"], x["x_test"], y["y_test"], names, language)


def language_groups(languages: Sequence[str], n_experiences: int, held_out: int = 1,
                    seed: int = 0) -> tuple[list[list[str]], list[str]]:
    """Shuffle ``languages`` with ``seed``, keep ``held_out`` of them out, and cut the rest into
    ``n_experiences`` groups of (nearly) equal size.

    >>> language_groups(["a", "b", "c", "d", "e"], 2, held_out=1, seed=0)
    ([['b', 'a'], ['e', 'd']], ['c'])
    """
    if not 1 <= n_experiences <= len(languages) - held_out:
        raise ValueError(f"n_experiences must be between 1 and {len(languages) - held_out} "
                         f"(languages minus held-out ones), got {n_experiences}")
    order = list(languages)
    random.Random(seed).shuffle(order)
    kept, out = order[held_out:], order[:held_out]
    bounds = [round(k * len(kept) / n_experiences) for k in range(n_experiences + 1)]
    return [kept[bounds[k]:bounds[k + 1]] for k in range(n_experiences)], out


def by_language(data: Dataset, groups: Sequence[Sequence[str]]) -> Stream:
    """Domain-incremental: experience ``k`` holds every clip of the languages ``groups[k]`` (all
    concepts, the same labels in every experience), tested on those languages' held-out copies."""
    spoken = set(data.metadata["language_train"])
    for k, group in enumerate(groups):
        if not group or set(group) - spoken:
            raise ValueError(f"groups.{k}: {list(group)} must name languages of the data: {', '.join(sorted(spoken))}")

    def rows(part: str, group: Sequence[str]) -> torch.Tensor:
        return torch.tensor([lang in group for lang in data.metadata[f"language_{part}"]])

    classes = tuple(range(data.n_classes))
    experiences = []
    for k, group in enumerate(groups):
        tr, te = rows("train", group), rows("test", group)
        experiences.append(Experience(data.x_train[tr], data.y_train[tr], data.x_test[te], data.y_test[te], id=k,
                                      classes=classes, metadata={"languages": list(group)},
                                      scenario="domain_incremental"))
    return Stream(experiences, n_classes=data.n_classes, name=f"languages_{data.name}", scenario="domain_incremental",
                  class_names=data.class_names, metadata={"languages": [list(g) for g in groups]})
