"""Speech with transcripts: audio files and transcript tables, LibriVox recordings, and a synthesised vocabulary stream.

Audio files (WAV, OGG, FLAC, raw 16-bit PCM) are read as float32 mono waveforms at 16 kHz
(:func:`read_audio`), bounded before they are decoded: at most :data:`MAX_BYTES` bytes, a sample rate up
to :data:`~retain.data.files.MAX_SAMPLE_RATE`, and a length of ``max_seconds`` (at most
:data:`MAX_SECONDS`) read from the header. A batch of clips with transcripts is a table of
``path,text`` or a folder of clips with a ``.txt`` beside each (:func:`transcript_table`).

Transcripts are in one written form, :func:`normalise`'s: lower-case words of the letters a-z and
apostrophes, separated by single spaces, no other punctuation, numbers spelled out, and the titles
spoken as "mister" / "missus" written as Whisper writes them, "mr" / "mrs". Word error rates compare
that form of the reference and of the hypothesis.

The vocabulary stream (:func:`vocabulary_stream`) is synthesised on this machine with the keyword
set's voices and perturbations (:mod:`retain.data.audio`): three experiences that each bring words of
one list in sentences of common English, then one experience of a voice family (espeak-ng's Klatt
voices) and a speaking rate (sox tempo 1.25-1.4) never heard before. Of the candidate lists in
:data:`VOCABULARIES` (16 words each, taken from the place names of tzdata, the Debian packages and the
Python packages installed here, generic medicine names and garden plant genera),
:data:`CHOSEN` holds the three on whose words the base Whisper tiny.en is wrong most often (lowest
new-word recall, ties broken by the higher WER), as measured by ``benchmarks/speech_vocabulary.py``:
it recognised 1 of 32 place names and none of the other lists' words; the three chosen also use three
different template categories (software, garden, medicine).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from retain.data.audio import add_noise, check_tools, perturb, synthesize, voices
from retain.data.base import DatasetNotFound, cache_dir
from retain.data.files import MAX_CHANNELS, MAX_SAMPLE_RATE, FileError, _natural, table_records
from retain.extras import require
from retain.util import TITLES, spell_numbers

SAMPLE_RATE = 16_000
AUDIO = (".wav", ".ogg", ".flac", ".raw")  # .raw: 16-bit little-endian PCM, mono, at 16 kHz
FORMATS = ("WAV", "WAVEX", "OGG", "FLAC", "RAW")  # libsndfile's names of the containers read
TABLES = (".csv", ".tsv", ".jsonl")
# 64 MiB holds 35 minutes of 16 kHz 16-bit mono WAV, 6 minutes of 48 kHz stereo; a longer file is
# refused before any of it is read.
MAX_BYTES = 64 * 2**20
# Without a caller's limit, clips of up to 10 minutes are decoded (38 MB of float32 at 16 kHz): a
# small OGG file can claim hours, and decoding it would cost gigabytes.
MAX_SECONDS = 600.0
PCSPHINX = Path("/usr/share/pocketsphinx/test/data")

TEMPO = (0.9, 1.1)  # sox tempo of the vocabulary experiences' speech
NEW_TEMPO = (1.25, 1.4)  # faster speakers: the voice experience's tempo, never used before it
# Pitch shifts of 150 cents doubled the base model's WER on espeak-ng's voices (29% -> 54% on 12
# general sentences), white noise at 20 dB raised it to 49%: milder ranges keep the speech intelligible.
PITCH = 100  # cents up or down
SNR = (20.0, 40.0)  # dB of white noise
TIMES = ("today", "tomorrow", "on monday", "this evening", "next week", "after lunch", "on friday", "at noon")
# Each category's templates: the first seven make training sentences, the last three test sentences,
# so that a test sentence is never heard in training, only its words.
TEMPLATES = {
    "places": ("we are flying to {w} {t}", "the train to {w} leaves {t}", "my sister will visit {w} {t}",
               "the weather in {w} was cold {t}", "they opened a new office in {w} {t}",
               "our friends drove to {w} {t}", "the meeting in {w} starts {t}",
               "i bought a map of {w} {t}", "the flight from {w} landed {t}", "he called his mother in {w} {t}"),
    "software": ("please install {w} on the server {t}", "the new version of {w} came out {t}",
                 "we removed {w} from the build {t}", "can you update {w} for me {t}", "the tests for {w} failed {t}",
                 "i will read the code of {w} {t}", "she fixed a bug in {w} {t}",
                 "did anyone upgrade {w} {t}", "the docs for {w} were wrong {t}", "we need a newer {w} {t}"),
    "medicines": ("the doctor prescribed {w} {t}", "take the {w} with a glass of water {t}",
                  "the pharmacy ran out of {w} {t}", "she stopped taking {w} {t}", "ask the nurse about {w} {t}",
                  "he needs a new box of {w} {t}", "my father started on {w} {t}",
                  "do not mix {w} with alcohol {t}", "the price of {w} went up {t}", "i picked up the {w} {t}"),
    "plants": ("we planted {w} in the garden {t}", "the {w} started to bloom {t}", "water the {w} {t}",
               "my neighbour gave me some {w} {t}", "the shop sells {w} seeds {t}", "cut back the {w} {t}",
               "the bees love the {w} {t}",
               "the {w} by the gate looks dry {t}", "she painted a picture of {w} {t}",
               "move the {w} into the shade {t}"),
}
TRAIN_TEMPLATES = 7
# Candidate lists: name -> (template category, words). Every word is one word of normalise's form.
VOCABULARIES = {
    "places": ("places", ("ouagadougou", "nouakchott", "bujumbura", "lubumbashi", "ndjamena", "mbabane",
                          "antananarivo", "ulaanbaatar", "thimphu", "ashgabat", "dushanbe", "qyzylorda",
                          "novokuznetsk", "srednekolymsk", "tegucigalpa", "kiritimati")),
    "packages": ("software", ("systemd", "kubectl", "valgrind", "heaptrack", "strace", "zstd", "pkgconf",
                              "gettext", "dirmngr", "debconf", "xauth", "cscope", "polkitd", "ipmitool",
                              "moreutils", "fontconfig")),
    "libraries": ("software", ("pydantic", "fastapi", "numpy", "scipy", "sqlalchemy", "optuna", "safetensors",
                               "uvicorn", "psycopg", "matplotlib", "pyarrow", "cleanlab", "sacrebleu", "mlxtend",
                               "jiwer", "tqdm")),
    "medicines": ("medicines", ("metformin", "omeprazole", "atorvastatin", "levothyroxine", "amlodipine",
                                "lisinopril", "gabapentin", "sertraline", "simvastatin", "losartan", "montelukast",
                                "escitalopram", "rosuvastatin", "pantoprazole", "furosemide", "clopidogrel")),
    "plants": ("plants", ("ranunculus", "eschscholzia", "rudbeckia", "heuchera", "helenium", "kniphofia",
                          "echinacea", "agapanthus", "nigella", "brunnera", "pulmonaria", "astrantia", "penstemon",
                          "gaillardia", "tradescantia", "alstroemeria")),
}
CHOSEN = ("packages", "plants", "medicines")
NEW_VOICES = tuple(f"espeak:{accent}+{variant}" for accent in ("en-us", "en-gb", "en-gb-scotland", "en-029")
                   for variant in ("klatt", "klatt2", "klatt3", "klatt4"))
# General English held out of every experience: the first four lists of the Harvard sentences
# (IEEE Recommended Practice for Speech Quality Measurements, 1969), in normalise's form.
GENERAL = (
    "the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background",
    "it's easy to tell the depth of a well", "these days a chicken leg is a rare dish",
    "rice is often served in round bowls", "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck", "the hogs were fed chopped corn and garbage",
    "four hours of steady work faced us", "a large size in stockings is hard to sell",
    "the boy was there when the sun rose", "a rod is used to catch pink salmon",
    "the source of the huge river is the clear spring", "kick the ball straight and follow through",
    "help the woman get back to her feet", "a pot of tea helps to pass the evening",
    "smoky fires lack flame and heat", "the soft cushion broke the man's fall",
    "the salt breeze came across from the sea", "the girl at the booth sold fifty bonds",
    "the small pup gnawed a hole in the sock", "the fish twisted and turned on the bent hook",
    "press the pants and sew a button on the vest", "the swan dive was far short of perfect",
    "the beauty of the view stunned the young boy", "two blue fish swam in the tank",
    "her purse was full of useless trash", "the colt reared and threw the tall rider",
    "it snowed rained and hailed the same morning", "read verse out loud for pleasure",
    "hoist the load to your left shoulder", "take the winding path to reach the lake",
    "note closely the size of the gas tank", "wipe the grease off his dirty face",
    "mend the coat before you go out", "the wrist was badly strained and hung limp",
    "the stray cat gave birth to kittens", "the young girl gave no clear response",
    "the meal was cooked before the bell rang", "what joy there is in living",
)
def normalise(text: str) -> str:
    """``text`` in the written form of transcripts (see the module's docstring).

    >>> normalise("Mister Dashwood paid 42 pounds -- at Ouagadougou's market!")
    "mr dashwood paid forty two pounds at ouagadougou's market"
    >>> normalise("Call 5550100 at 10:30, Mrs. Jennings' place")
    'call five five five zero one zero zero at ten thirty mrs jennings place'
    """
    text = re.sub(r"[^a-z' ]+", " ", spell_numbers(text.lower()).replace("’", "'"))
    words = (w.strip("'") for w in text.split())
    return " ".join(TITLES.get(w, w) for w in words if w)


def _extension(path: Path) -> str:
    return repr(path.suffix) if path.suffix else "(none)"


def _bounds(where: str, rate: int, channels: int, frames: int, max_seconds: float | None) -> float:
    """The limit in seconds, once the header's rate, channels and length are within it."""
    limit = MAX_SECONDS if max_seconds is None else min(max_seconds, MAX_SECONDS)
    if not 0 < channels <= MAX_CHANNELS:
        raise FileError(f"{where}: {channels} channels; audio of 1 to {MAX_CHANNELS} channels is read")
    if not SAMPLE_RATE // 4 <= rate <= MAX_SAMPLE_RATE:
        raise FileError(f"{where}: sample rate {rate} Hz; audio of {SAMPLE_RATE // 4} to {MAX_SAMPLE_RATE} Hz "
                        "is read")
    if frames == 0:
        raise FileError(f"{where}: empty audio (no samples)")
    if frames / rate > limit:
        raise FileError(f"{where}: {frames / rate:.1f} s long; clips of at most {limit:g} s are read")
    return limit


def _decode(source: io.BufferedIOBase, where: str, max_seconds: float | None, raw: bool = False) -> np.ndarray:
    sf = require("soundfile", "audio")
    from scipy.signal import resample_poly

    options = dict(samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="RAW", endian="LITTLE") if raw else {}
    try:
        with sf.SoundFile(source, **options) as f:
            if f.format not in FORMATS:
                raise FileError(f"{where}: {f.format_info} audio; WAV, OGG, FLAC and raw 16-bit PCM are read")
            limit = _bounds(where, f.samplerate, f.channels, f.frames, max_seconds)
            most = math.floor(limit * f.samplerate)
            # the header's length is not trusted: at most one frame past the limit is decoded
            audio = f.read(frames=most + 1, dtype="float32", always_2d=True)
            rate = f.samplerate
    except FileError:
        raise
    except (RuntimeError, TypeError, ValueError, EOFError) as err:  # libsndfile's errors say what is wrong
        # libsndfile names the file object it was given ("Error opening <_io.BytesIO object at 0x...>:")
        reason = re.sub(r"^Error opening <[^>]*>: ", "", str(err).splitlines()[0])
        raise FileError(f"{where}: not readable audio ({reason}); WAV, OGG, FLAC and raw 16-bit PCM are read") from None
    if len(audio) == 0:
        raise FileError(f"{where}: empty audio (no samples)")
    if len(audio) > most:
        raise FileError(f"{where}: longer than its header says; clips of at most {limit:g} s are read")
    audio = audio.mean(1)
    if not np.isfinite(audio).all():
        raise FileError(f"{where}: holds NaN or infinite samples")
    if rate != SAMPLE_RATE:
        ratio = Fraction(SAMPLE_RATE, rate).limit_denominator(1000)
        audio = resample_poly(audio, ratio.numerator, ratio.denominator)
    samples: np.ndarray = audio.astype(np.float32)
    return samples


def read_audio(path: Path, max_seconds: float | None = None) -> np.ndarray:
    """A WAV, OGG, FLAC or raw (16-bit PCM, mono, 16 kHz) file as a float32 mono waveform at
    :data:`SAMPLE_RATE`: channels averaged, resampled by ``scipy.signal.resample_poly``. A file of
    more than :data:`MAX_BYTES` bytes, an empty one, or one longer than ``max_seconds`` (at most
    :data:`MAX_SECONDS`) is refused before it is decoded, with a :class:`~retain.data.files.FileError`
    (a ``ValueError``) naming the file and what is allowed.

    >>> clip = read_audio(PCSPHINX / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav")
    >>> clip.dtype, round(len(clip) / SAMPLE_RATE, 2)
    (dtype('float32'), 2.99)
    """
    path = Path(path)
    where = str(path)
    if path.suffix.lower() not in AUDIO:
        raise FileError(f"{where}: extension {_extension(path)}; audio files {', '.join(AUDIO)} are read")
    if not path.exists():
        raise FileError(f"{where}: no such file")
    if not path.is_file():
        raise FileError(f"{where}: not a regular file (a pipe, socket, device or folder)")
    size = path.stat().st_size
    if size == 0:
        raise FileError(f"{where}: empty file")
    if size > MAX_BYTES:
        raise FileError(f"{where}: {size:,} bytes; audio files of at most {MAX_BYTES:,} bytes are read")
    with open(path, "rb") as f:
        return _decode(f, where, max_seconds, raw=path.suffix.lower() == ".raw")


def read_audio_bytes(data: bytes, where: str, max_seconds: float | None = None) -> np.ndarray:
    """:func:`read_audio` for the bytes of a WAV, OGG or FLAC file (an HTTP body); ``where`` names
    them in errors.

    >>> import soundfile as sf
    >>> body = io.BytesIO(); sf.write(body, np.zeros(8000), 8000, format="WAV")
    >>> len(read_audio_bytes(body.getvalue(), "the request body"))
    16000
    >>> read_audio_bytes(b"hello", "the request body")
    Traceback (most recent call last):
    retain.data.files.FileError: the request body: not readable audio (...); WAV, OGG, FLAC and raw 16-bit PCM are read
    """
    if not data:
        raise FileError(f"{where}: empty (the bytes of a WAV, OGG or FLAC file are expected)")
    if len(data) > MAX_BYTES:
        raise FileError(f"{where}: {len(data):,} bytes; audio of at most {MAX_BYTES:,} bytes is read")
    return _decode(io.BytesIO(data), where, max_seconds)


def _clip_path(table: Path, number: int, value: object) -> Path:
    where = f"{table}: row {number}: field 'path'"
    if not isinstance(value, str) or not value.strip():
        raise FileError(f"{where} is empty (the clip's path, relative to the table's folder, is expected)")
    clip = table.parent / value.strip()
    if clip.suffix.lower() not in AUDIO:
        raise FileError(f"{where}: {value!r} has extension {_extension(clip)}; clips {', '.join(AUDIO)} "
                        "are read")
    if not clip.is_file():
        raise FileError(f"{where}: no clip {value!r} ({clip})")
    return clip


def _table(path: Path, labelled: bool) -> list[tuple[Path, str | None]]:
    rows = list(table_records(path))
    if not rows:
        raise FileError(f"{path}: no rows (columns path and text are expected)")
    columns = list(rows[0][1])
    for column in ("path", "text")[:1 + labelled]:
        if column not in columns:
            raise FileError(f"{path}: no column {column!r} (columns: {', '.join(columns)}; path and text are "
                            "expected)")
    found = []
    for number, record in rows:
        clip = _clip_path(path, number, record.get("path"))
        text = record.get("text")
        text = " ".join(str(text).split()) if text is not None else ""
        found.append((clip, text if labelled else text or None))  # an empty transcript: the gate's to judge
    return found


def _folder(folder: Path, labelled: bool) -> list[tuple[Path, str | None]]:
    files = sorted((f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")), key=_natural)
    clips = [f for f in files if f.suffix.lower() in AUDIO]
    for f in files:
        if f.suffix.lower() not in (*AUDIO, ".txt"):
            raise FileError(f"{f}: extension {_extension(f)}; a folder of clips holds {', '.join(AUDIO)} "
                            "clips and .txt transcripts")
    if not clips:
        raise FileError(f"{folder}: no clips ({', '.join(AUDIO)})")
    stems = {c.with_suffix("") for c in clips}
    for f in files:
        if f.suffix.lower() == ".txt" and f.with_suffix("") not in stems:
            raise FileError(f"{f}: a transcript without a clip of the same name ({', '.join(AUDIO)})")
    found: list[tuple[Path, str | None]] = []
    for clip in clips:
        transcript = clip.with_suffix(".txt")
        if not transcript.is_file():
            if labelled:
                raise FileError(f"{clip}: no transcript {transcript.name} beside it")
            found.append((clip, None))
            continue
        try:
            text = " ".join(transcript.read_text(encoding="utf-8").split())
        except UnicodeDecodeError as err:
            raise FileError(f"{transcript}: not UTF-8 text (byte {err.start})") from None
        found.append((clip, text if labelled else text or None))  # an empty transcript: the gate's to judge
    return found


def transcript_table(path: Path, labelled: bool = True) -> list[tuple[Path, str | None]]:
    """The clips of a batch and their transcripts, from a CSV, TSV or JSON Lines table with columns
    ``path`` (relative to the table's folder) and ``text``, or from a folder of clips each with a
    ``.txt`` transcript of the same name beside it. Unless ``labelled`` (clips to transcribe), the
    text is optional (``None`` where missing) and ``path`` may also be one audio file. A folder
    holding other files than clips and transcripts is refused, naming the first.
    """
    path = Path(path)
    if not path.exists():
        raise FileError(f"{path}: no such file or folder")
    if path.is_dir():
        return _folder(path, labelled)
    if path.suffix.lower() in TABLES:
        return _table(path, labelled)
    if not labelled and path.suffix.lower() in AUDIO:
        return [(path, None)]
    allowed = f"a table ({', '.join(TABLES)}) of path and text, or a folder of clips with .txt transcripts"
    raise FileError(f"{path}: extension {_extension(path)}; {allowed}"
                    + ("" if labelled else ", or one clip"))


@dataclass(frozen=True, eq=False)  # eq=False: arrays do not compare to one truth value
class Utterance:
    """One spoken sentence: a float32 waveform at 16 kHz, its transcript (:func:`normalise`'s form)
    and who spoke it (``engine:name`` for synthesised voices, the recording's name for real ones)."""

    audio: np.ndarray
    text: str
    voice: str


@dataclass
class SpeechExperience:
    """One experience of a speech stream: its training and test utterances, and the words it brings."""

    name: str
    train: list[Utterance]
    test: list[Utterance]
    new_words: tuple[str, ...]


@dataclass
class SpeechStream:
    """Experiences in order, and the sets whose word error rate must not rise (``librivox``, ``general``)."""

    experiences: list[SpeechExperience]
    retention: dict[str, list[Utterance]]


def _recordings(folder: Path, transcripts: str, prefix: str) -> list[Utterance]:
    listing = folder / transcripts
    if not listing.is_file():
        raise DatasetNotFound(f"{listing} is missing: the recordings come from Debian's package "
                              "pocketsphinx-testdata (apt-get install pocketsphinx-testdata)")
    found = []
    for line in listing.read_text().splitlines():
        match = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*", line)
        if match:
            text, name = match.groups()
            found.append(Utterance(read_audio(folder / f"{name}.wav"), normalise(text), f"{prefix}:{name}"))
    return found


def librivox() -> list[Utterance]:
    """The five LibriVox utterances of Debian's pocketsphinx-testdata (one reader, Sense and
    Sensibility; 71 words), with their transcripts.

    >>> recordings = librivox()
    >>> recordings[1].text, sum(len(u.text.split()) for u in recordings)
    ('he was not an ill disposed young man', 71)
    """
    return _recordings(PCSPHINX / "librivox", "transcription", "librivox")


def cards() -> list[Utterance]:
    """The five card-name utterances of pocketsphinx-testdata ("ten of clubs"), with their transcripts.

    >>> [u.text for u in cards()][:2]
    ['ten of clubs', 'four queen of clubs']
    """
    return _recordings(PCSPHINX / "cards", "cards.transcription", "cards")


def sentences(vocabulary: str, count: int, part: str = "train", seed: int = 0,
              words: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``count`` distinct sentences ``(text, new word)`` of a list of :data:`VOCABULARIES`, from
    its category's training or test templates (``part``); the words (default: the whole list) are
    used in turn, so each appears once ``count`` reaches their number.

    >>> for text, word in sentences("places", 2, seed=0):
    ...     print(f"{text} ({word})")
    the train to ouagadougou leaves this evening (ouagadougou)
    my sister will visit nouakchott on friday (nouakchott)
    """
    category, listed = VOCABULARIES[vocabulary]
    words = list(listed if words is None else words)
    templates = TEMPLATES[category][:TRAIN_TEMPLATES] if part == "train" else TEMPLATES[category][TRAIN_TEMPLATES:]
    if count > len(words) * len(templates) * len(TIMES):
        raise ValueError(f"count: {count} {part} sentences of {vocabulary!r}; at most "
                         f"{len(words) * len(templates) * len(TIMES)} are distinct")
    rng = random.Random(f"{seed}:{vocabulary}:{part}")
    found: dict[str, str] = {}
    while len(found) < count:
        word = words[len(found) % len(words)]
        text = rng.choice(templates).format(w=word, t=rng.choice(TIMES))
        found.setdefault(text, word)
    return list(found.items())


def _spoken(text: str, voice: str, seed: int, tempo: tuple[float, float], workdir: Path) -> np.ndarray:
    rng = random.Random(f"{seed}:{voice}:{text}")
    tag = hashlib.sha1(f"{voice}:{text}".encode()).hexdigest()[:16]
    raw = workdir / f"{tag}.wav"
    synthesize(voice, text, raw)
    audio = perturb(raw, workdir / f"{tag}-16k.wav", rng.uniform(*tempo), rng.uniform(-PITCH, PITCH))
    return add_noise(audio, rng.uniform(*SNR), rng.getrandbits(32))


def speak(lines: Sequence[tuple[str, str]], seed: int = 0, tempo: tuple[float, float] = TEMPO, workers: int = 4,
          progress: bool = False) -> list[np.ndarray]:
    """Each ``(text, voice)`` synthesised and perturbed: sox tempo drawn from ``tempo``, pitch up
    to :data:`PITCH` cents either way, white noise at a signal-to-noise ratio in :data:`SNR`; drawn
    from ``seed``, the text and the voice, so the same line always sounds the same."""
    check_tools("speech")
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(_spoken, text, voice, seed, tempo, Path(tmp)) for text, voice in lines]
        return [f.result() for f in tqdm(futures, desc="synthesising speech", unit="sentence", disable=not progress)]


def _held_out(pool: Sequence[str], seed: int, name: str) -> tuple[list[str], list[str]]:
    """(training voices, test voices) of ``pool``: a seeded quarter is held out for testing."""
    test = set(random.Random(f"{seed}:{name}").sample(list(pool), max(1, round(len(pool) / 4))))
    return [v for v in pool if v not in test], [v for v in pool if v in test]


def _plan(seed: int, train_per_experience: int, test_per_experience: int,
          general: int) -> tuple[list[tuple[str, str, str, str]], dict[str, tuple[str, ...]]]:
    """Every utterance to synthesise as (part, text, voice, tempo range name), and each vocabulary's new words."""
    train_voices, test_voices = _held_out(voices(), seed, "voices")
    new_train, new_test = _held_out(NEW_VOICES, seed, "new voices")
    rng = random.Random(f"{seed}:plan")
    plan, new_words = [], {}
    for k, vocabulary in enumerate(CHOSEN):
        words = VOCABULARIES[vocabulary][1][:train_per_experience]
        new_words[vocabulary] = words
        for part, count, pool in (("train", train_per_experience, train_voices),
                                  ("test", test_per_experience, test_voices)):
            for text, _ in sentences(vocabulary, count, part, seed, words):
                plan.append((f"{k}/{part}", text, rng.choice(pool), "old"))
    for part, count, pool in (("train", train_per_experience, new_train), ("test", test_per_experience, new_test)):
        shares = [count // len(CHOSEN) + (i < count % len(CHOSEN)) for i in range(len(CHOSEN))]
        for vocabulary, share in zip(CHOSEN, shares, strict=True):
            for text, _ in sentences(vocabulary, share, part, seed + 1, new_words[vocabulary]):
                plan.append((f"{len(CHOSEN)}/{part}", text, rng.choice(pool), "new"))
    for text in random.Random(f"{seed}:general").sample(GENERAL, general):
        plan.append(("general", text, rng.choice(test_voices), "old"))
    return plan, new_words


def vocabulary_stream(seed: int = 0, progress: bool = True, train_per_experience: int = 120,
                      test_per_experience: int = 40, general: int = 40, workers: int = 4) -> SpeechStream:
    """The vocabulary stream (see the module's docstring): experiences of the :data:`CHOSEN` lists'
    words, then one of new voices (:data:`NEW_VOICES`) speaking faster (:data:`NEW_TEMPO`); each
    vocabulary experience holds ``train_per_experience`` and ``test_per_experience`` sentences
    (the voice experience's sentences are drawn from the three lists alike). A seeded quarter of
    each voice pool is held out: test sentences and the ``general`` retention set (``general`` of
    the :data:`GENERAL` sentences) are spoken only by voices never heard in training;
    ``retention["librivox"]`` holds the real recordings of :func:`librivox`.

    Generated once per parameter set and cached as ``.npz`` under ``cache_dir() / "speech"``; the
    default stream (680 sentences, 1.4-4.2 s each) takes about 18 s on two cores, and loads from the
    cache in a second.
    """
    if train_per_experience < 1 or test_per_experience < 1 or not 0 <= general <= len(GENERAL):
        raise ValueError(f"train_per_experience and test_per_experience must be at least 1 and general at most "
                         f"{len(GENERAL)} (got {train_per_experience}, {test_per_experience}, {general})")
    plan, new_words = _plan(seed, train_per_experience, test_per_experience, general)
    params = {"plan": plan, "seed": seed, "tempo": [TEMPO, NEW_TEMPO], "pitch": PITCH, "snr": SNR,
              "rate": SAMPLE_RATE, "version": 1}
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "speech" / f"vocabulary-{key}.npz"
    audio = _cached(path, len(plan))
    if audio is None:
        tempos = {"old": TEMPO, "new": NEW_TEMPO}
        spoken = []
        for name, tempo in tempos.items():  # one tempo range per call to speak
            lines = [(text, voice) for _, text, voice, t in plan if t == name]
            spoken.append(iter(speak(lines, seed, tempo, workers, progress)))
        by_tempo = dict(zip(tempos, spoken, strict=True))
        audio = [next(by_tempo[t]) for *_, t in plan]
        lengths = np.array([len(a) for a in audio], dtype=np.int64)
        stored = np.concatenate(audio).astype(np.float16)  # half the space; far below the noise added
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = path.with_suffix(".tmp.npz")
        np.savez(tmp_path, audio=stored, lengths=lengths)
        tmp_path.replace(path)
        audio = _split(stored, lengths)  # as a later load reads them
    parts: dict[str, list[Utterance]] = {}
    for (part, text, voice, _), clip in zip(plan, audio, strict=True):
        parts.setdefault(part, []).append(Utterance(clip, text, voice))
    names = [*CHOSEN, "voices"]
    experiences = [SpeechExperience(name, parts[f"{k}/train"], parts[f"{k}/test"], new_words.get(name, ()))
                   for k, name in enumerate(names)]
    return SpeechStream(experiences, {"librivox": librivox(), "general": parts.get("general", [])})


def _cached(path: Path, count: int) -> list[np.ndarray] | None:
    """The cached waveforms of ``path``, or None when it is missing or unreadable (generated again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            audio, lengths = z["audio"], z["lengths"]
    except (OSError, ValueError, KeyError):
        return None
    if len(lengths) != count or int(lengths.sum()) != len(audio):
        return None
    return _split(audio, lengths)


def _split(audio: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(audio.astype(np.float32), np.cumsum(lengths)[:-1])
