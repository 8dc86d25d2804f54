"""Transcription: rows are audio clips with their transcripts, scored by the word error rate.

The model is a :class:`~retain.models.speech.SpeechModel` (Whisper tiny.en, or the tiny CTC model),
trained by a :class:`~retain.engine.speech.SpeechLearner`. A batch is a table of ``path,text`` (CSV or
JSON Lines, paths relative to the table) or a folder of clips with a ``.txt`` transcript beside each
(:func:`retain.data.speech.transcript_table`). A store holds a seeded share of each batch's clips out
and scores every version by ``1 − WER`` on each batch's held-out clips (0 when errors outnumber the
reference words), so higher is better everywhere a score flows (the rule, the dashboard, the matrix);
``max_drop`` is in WER points.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator
from torch import Tensor

from retain.config import ConfigError, ServiceConfig
from retain.data import Experience
from retain.engine.generative import check_generative
from retain.engine.speech import SpeechLearner
from retain.metrics import wer
from retain.models.speech import Adaptation, ModelName, SpeechModel
from retain.quality import GatePolicy, GateReport
from retain.quality.gate import decide
from retain.store import StoreError
from retain.strategies import STRATEGIES, make_strategy
from retain.tasks.base import (
    Prediction,
    WrittenAnswers,
    strings_of,
    strings_tensors,
)
from retain.util import slug

SAMPLE_RATE = 16_000
MAX_WORDS_PER_SECOND = 7.0  # fast read speech is about 4: a transcript far past it belongs to another clip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SpeechModelConfig(_Strict):
    """The recogniser (:class:`retain.models.speech.SpeechModel`) and how it adapts."""

    name: ModelName = "whisper-tiny.en"
    adaptation: Adaptation = "decoder"
    lora_rank: PositiveInt = Field(8, le=1024)
    max_seconds: float = Field(10.0, gt=0, le=30, description="the longest clip: the window the encoder reads")
    max_tokens: int = Field(48, ge=8, le=448, description="the longest transcript in tokens (Whisper: its prompt "
                            "and end included; CTC: characters)")


class SpeechTrainingConfig(_Strict):
    """How each batch trains: AdamW at ``lr``, ``epochs`` passes of ``batch_size`` clips."""

    lr: PositiveFloat = 1e-5
    epochs: PositiveInt = 2
    batch_size: PositiveInt = 8
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="cpu, cuda, cuda:N or mps")


class SpeechMethod(_Strict):
    """Strategies composed (those that apply to sequence models: finetune, replay, l2, ewc, joint,
    weight averaging)."""

    label: str
    compose: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("compose", mode="before")
    @classmethod
    def _compose(cls, v: Any) -> list[dict[str, Any]]:
        specs = [{"name": s} if isinstance(s, str) else s for s in (v or [])]
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or s.get("name") not in STRATEGIES:
                raise ValueError(f"compose[{i}]: give a strategy name, got {s!r}")
            if "policy" in STRATEGIES[s["name"]].__dataclass_fields__:  # sequences have no class to balance
                s.setdefault("policy", "reservoir")
            check_generative(make_strategy(s["name"], **{k: w for k, w in s.items() if k != "name"}))
        return specs


class TranscriptionConfig(_Strict):
    """A transcription store's config (``task: transcription``)."""

    task: Literal["transcription"] = "transcription"
    name: str = "transcription"
    seed: int = 0
    model: SpeechModelConfig = Field(default_factory=SpeechModelConfig)
    training: SpeechTrainingConfig = Field(default_factory=SpeechTrainingConfig)
    methods: list[SpeechMethod] = Field(default_factory=lambda: [SpeechMethod(label="finetune")])
    max_drop: NonNegativeFloat = Field(2.0, le=100, description="a store promotes a version only if no batch "
                                       "it had learned gained more than this many WER points")
    confidence: float | None = Field(None, gt=0.5, lt=1.0, description="judge a batch's drop by the lower bound "
                                     "of a paired bootstrap over its clips at this confidence")
    min_held_out: PositiveInt = Field(10, description="the fewest held-out clips a store's batch needs")
    kept: Literal["carry", "hold", "drop"] = Field(
        "carry", description="the clips of a batch whose candidate is kept: carried into the next update, held "
        "until `retain update --retry`, or dropped (recorded)")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="a store's checks on incoming clips")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="retain serve on a transcription store")

    @field_validator("methods")
    @classmethod
    def _labels(cls, v: list[SpeechMethod]) -> list[SpeechMethod]:
        labels = [m.label for m in v]
        if not v or len({slug(label) for label in labels}) != len(labels):
            raise ValueError(f"give at least one method, with labels distinct as folder names (got {labels})")
        return v


def build_recogniser(config: TranscriptionConfig, method: SpeechMethod | None = None) -> SpeechLearner:
    """The learner of ``method`` (default: the config's first): the config's model and training."""
    method = method or config.methods[0]
    m, t = config.model, config.training
    strategies = [make_strategy(s["name"], **{k: v for k, v in s.items() if k != "name"}) for s in method.compose]
    model = SpeechModel(m.name, m.adaptation, m.lora_rank, m.max_seconds, m.max_tokens, config.seed)
    return SpeechLearner(model, strategies, lr=t.lr, epochs=t.epochs, batch_size=t.batch_size, seed=config.seed,
                         device=t.device)


@dataclass
class Clips:
    """Audio clips (16 kHz mono waveforms), their transcripts and where each came from."""

    audio: list[np.ndarray]
    texts: list[str]
    origin: list[str]

    def __len__(self) -> int:
        return len(self.audio)

    def take(self, index: Tensor) -> Clips:
        rows = index.tolist()
        return Clips([self.audio[i] for i in rows], [self.texts[i] for i in rows], [self.origin[i] for i in rows])

    def tensors(self) -> dict[str, Tensor]:
        audio = torch.from_numpy(np.concatenate(self.audio).astype(np.float32)) if self.audio else torch.zeros(0)
        return {"audio": audio, "audio_len": torch.tensor([len(a) for a in self.audio], dtype=torch.long)} | \
            strings_tensors("text", self.texts) | strings_tensors("origin", self.origin)

    def hashes(self) -> list[str]:
        """A hash of each clip's audio: the same clip sent again, with any transcript, is a repeat
        (as a classifier's row is, with any label)."""
        return [hashlib.sha256(np.asarray(a, dtype=np.float32).tobytes()).hexdigest() for a in self.audio]

    def audio_hashes(self) -> list[str]:
        return self.hashes()

    def content(self) -> tuple[Tensor, ...]:
        return tuple(self.tensors().values())


def read_clips(path: Path, max_seconds: float, labelled: bool = True) -> Clips:
    """The clips and transcripts a batch file or folder names (``labelled=False``: transcripts may be
    missing, as for ``retain predict``); a clip or row that cannot be read is refused, naming it."""
    from retain.data.speech import read_audio, transcript_table

    audio, texts, origin = [], [], []
    for clip, text in transcript_table(path, labelled=labelled):
        audio.append(read_audio(clip, max_seconds))
        texts.append(text or "")
        origin.append(str(clip))
    if not audio:
        raise StoreError(f"{path}: no clips")
    return Clips(audio, texts, origin)


class Transcription(WrittenAnswers[Clips]):
    """Clips with transcripts, learned batch after batch; a version is scored by ``1 − WER`` on each
    batch's held-out clips and promoted only if no batch it had learned lost more than ``max_drop``
    WER points."""

    name = "transcription"
    metric = "1 - WER"
    labels = "transcript"
    config_type = TranscriptionConfig
    model_kept = "a store keeps the model and adaptation its versions were made with"
    too_few = "a share of the clips is held out: send more clips"
    rows_called = "clips"

    # -- rows -----------------------------------------------------------------------------
    def read(self, data: Path, labelled: bool = True) -> Clips:
        return read_clips(data, self.config.model.max_seconds, labelled)

    def as_came(self, data: Path, rows: Clips, names: list[str]) -> list[dict[str, Any]]:
        return [{"file": o, "text": t} for o, t in zip(rows.origin, rows.texts, strict=True)]

    def join(self, parts: list[Clips]) -> Clips:
        return Clips(*([row for part in parts for row in getattr(part, f)] for f in ("audio", "texts", "origin")))

    def rows_of(self, tensors: dict[str, Tensor]) -> Clips:
        ends = tensors["audio_len"].cumsum(0).tolist()
        audio = tensors["audio"].numpy()
        clips = [audio[a:b].copy() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        return Clips(clips, strings_of(tensors, "text"), strings_of(tensors, "origin"))

    def label_names(self, learner: SpeechLearner) -> list[str]:
        return []  # a recogniser's answers are open text, not a list of names

    # -- learning -------------------------------------------------------------------------
    def new_learner(self, rows: Clips, names: list[str], seed: int) -> SpeechLearner:
        return build_recogniser(self.config.model_copy(update={"seed": seed}))

    def readable(self, learner: SpeechLearner, rows: Clips, where: str) -> Clips:
        limit = learner.model.max_seconds
        long = next((i for i, a in enumerate(rows.audio) if len(a) > SAMPLE_RATE * limit), None)
        if long is not None:
            raise ValueError(f"{where}: clip {rows.origin[long]} lasts {len(rows.audio[long]) / SAMPLE_RATE:.1f} s; "
                             f"this store's model reads at most {limit:g} s (model.max_seconds)")
        return rows

    def fit(self, learner: SpeechLearner, train: Clips, held: Clips, index: int, names: list[str],
            progress: bool = False) -> None:
        try:
            x, y = learner.rows(train.audio, train.texts)
        except ValueError as err:  # a transcript longer than the rows: the config's limit is the one to raise
            raise ConfigError(f"model.max_tokens: {err}") from None
        empty = torch.empty(0, dtype=torch.long)
        # the batch's index as its task id: under experts adaptation, the adapter that learns it
        learner.fit(Experience(x, y, x[:0], empty, id=index, task=0, classes=(0,),
                               t_train=torch.full((len(x),), index, dtype=torch.long), scenario="domain_incremental"),
                    progress)

    def inspect(self, rows: Clips, current: SpeechLearner | None, held: dict[str, Clips], known: set[str],
                seed: int) -> GateReport:
        """Repeats (the same clip again, or one held out already), and clips no transcript fits:
        silence, an empty transcript, or more words than anyone says in the clip's time."""
        report = GateReport(len(rows))
        seen = set(known) | {h for part in held.values() for h in part.audio_hashes()}
        problems: dict[int, str] = {}
        for i, (audio, text, h) in enumerate(zip(rows.audio, rows.texts, rows.audio_hashes(), strict=True)):
            words = len(wer.normalize(text).split())
            seconds = len(audio) / SAMPLE_RATE
            if not words:
                problems[i] = "empty transcript"
            elif float(np.abs(audio).max(initial=0.0)) < 1e-3:
                problems[i] = "silent clip"
            elif words > MAX_WORDS_PER_SECOND * seconds + 2:
                problems[i] = f"more than {MAX_WORDS_PER_SECOND:g} words a second"
            if self.gate_policy.duplicates and h in seen:
                report.duplicates.append(i)
            seen.add(h)
        report.label_issues = sorted(problems)
        share = len(problems) / max(len(rows), 1)
        kinds = sorted(set(problems.values()))
        found = (f"{len(problems)} clips no transcript fits ({100 * share:.1f}% of {len(rows)}"
                 f"{': ' + ', '.join(kinds) if kinds else ''}), {len(report.duplicates)} duplicates")
        return decide(report, share, found, self.gate_policy)

    def transcripts(self, learner: SpeechLearner, rows: Clips, progress: bool = False) -> list[str]:
        return learner.transcribe(rows.audio, progress=progress) if len(rows) else []

    def scores(self, learner: SpeechLearner, held: dict[str, Clips]) -> dict[str, float]:
        """``1 − WER`` on each batch's held-out clips."""
        return {name: wer.word_accuracy(rows.texts, self.transcripts(learner, rows)) for name, rows in held.items()}

    def row_scores(self, learner: SpeechLearner, held: dict[str, Clips]) -> dict[str, Tensor]:
        """Each held-out clip's score, keyed by batch: their mean is the batch's ``1 − WER``
        (:func:`retain.metrics.wer.row_scores`), so a paired bootstrap bounds the rise of its WER."""
        return {name: wer.row_scores(rows.texts, self.transcripts(learner, rows)).float()
                for name, rows in held.items()}

    def per_answer(self, learner: SpeechLearner, held: dict[str, Clips]) -> dict[str, float]:
        """None: a transcript has no classes to break the score down by (the batches' scores say it all)."""
        return {}

    # -- answering ------------------------------------------------------------------------
    def predict(self, learner: SpeechLearner, data: Any, top_k: int, progress: bool = False) -> list[Prediction]:
        rows = data if isinstance(data, Clips) else self.read(Path(data), labelled=False)
        rows = self.readable(learner, rows, str(data) if isinstance(data, str | Path) else "inputs")
        return [Prediction(o, text, []) for o, text in zip(rows.origin, self.transcripts(learner, rows, progress),
                                                           strict=True)]

    def request_rows(self, inputs: list[dict[str, Any]], where: str) -> Clips:
        """Clips sent as base64 WAV or OGG files (each input ``{"audio"}``), at most ``model.max_seconds`` long."""
        import base64
        import binascii

        from retain.data.files import InputError
        from retain.data.speech import read_audio_bytes

        clips = []
        for i, item in enumerate(inputs):
            kind = next(iter(item))
            if kind != "audio":
                raise InputError(f"{where}.{i}.{kind}", "this model transcribes speech: send 'audio' (base64 of a "
                                 "WAV or OGG file)")
            try:
                raw = base64.b64decode(item["audio"], validate=True)
            except (binascii.Error, ValueError):
                raise InputError(f"{where}.{i}.audio", "not base64") from None
            try:
                clips.append(read_audio_bytes(raw, "audio", self.config.model.max_seconds))
            except ValueError as err:
                raise InputError(f"{where}.{i}.audio", str(err).removeprefix("audio: ")) from None
        return Clips(clips, [""] * len(clips), [f"{where}.{i}" for i in range(len(clips))])

    def warm_rows(self) -> Clips:
        return Clips([np.zeros(SAMPLE_RATE, dtype=np.float32)], [""], ["warm-up"])

    def answer_score(self, answer: str, label: str) -> float:
        """The transcript's ``1 − WER`` against the corrected one (0 at most)."""
        return wer.word_accuracy([label], [answer])

    def with_answers(self, rows: Clips, answers: list[str]) -> tuple[Clips, list[str]]:
        return Clips(rows.audio, list(answers), rows.origin), []

    def evaluate(self, learner: SpeechLearner, data: Path, version: int, progress: bool = False) -> dict[str, Any]:
        rows = self.readable(learner, self.read(data), str(data))
        hypotheses = self.transcripts(learner, rows, progress)
        return {"version": version, "rows": len(rows), "wer": 100 * wer.wer(rows.texts, hypotheses),
                "cer": 100 * wer.cer(rows.texts, hypotheses), "per_clip": {
                    o: {"reference": r, "transcript": h} for o, r, h in zip(rows.origin, rows.texts, hypotheses,
                                                                           strict=True)}}

    # -- tuning a store (retain.tuning.answers) ----------------------------------------------------
    def tuning_share(self, rows: Clips, percent: int, salt: str) -> Tensor:
        """By a hash of each clip's audio: a recording falls on one side whatever its transcript."""
        return self.hashed_share(rows.audio_hashes(), percent, salt)

    def tuning_values(self) -> dict[str, Any]:
        m = self.config.model
        adapters = m.adaptation in ("lora", "experts") and m.name != "ctc-tiny"  # the CTC model trains fully
        return ({"training.lr": self.config.training.lr} | ({"model.lora_rank": m.lora_rank} if adapters else {})
                | self.strategy_values(self.config.methods[0].compose))

    def tuned(self, values: dict[str, Any]) -> TranscriptionConfig:
        raw = self.config.model_dump(mode="json")
        method = raw["methods"][0]
        method["compose"] = self.with_strategy_values(method["compose"], values)
        raw["methods"] = [method]
        raw["training"]["lr"] = values.get("training.lr", raw["training"]["lr"])
        raw["model"]["lora_rank"] = values.get("model.lora_rank", raw["model"]["lora_rank"])
        config: TranscriptionConfig = self.validate(raw)
        return config
