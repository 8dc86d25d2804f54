"""Tiny spoken batches for the transcription tests: each word a tone, clips with a transcript beside each."""

from pathlib import Path

import numpy as np
import soundfile

WORDS = ("go", "stop", "up", "down")
RATE = 16_000


def clip(text: str, rng: np.random.Generator) -> np.ndarray:
    """``text`` (words of :data:`WORDS`) as a clip: a quarter second of each word's tone, then a
    tenth of silence, under faint noise."""
    t = np.arange(RATE // 4) / RATE
    parts = [np.concatenate([0.5 * np.sin(2 * np.pi * (200 + 150 * WORDS.index(w)) * t), np.zeros(RATE // 10)])
             for w in text.split()]
    audio = np.concatenate(parts)
    return (audio + rng.normal(0, 0.01, len(audio))).astype(np.float32)


def batch_folder(folder: Path, n: int, seed: int, words: tuple[str, ...] = WORDS, text=None) -> Path:
    """``n`` two-word clips as WAV files with a ``.txt`` transcript beside each (``text(i, spoken)``
    writes another transcript than the one spoken)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        spoken = " ".join(rng.choice(words, 2))
        soundfile.write(folder / f"clip{i:03d}.wav", clip(spoken, rng), RATE)
        (folder / f"clip{i:03d}.txt").write_text((text(i, spoken) if text else spoken) + "\n")
    return folder
