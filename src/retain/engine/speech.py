"""The learner of a speech recogniser: continual fine-tuning on (clip, transcript) rows, with strategies.

Rows are laid out by :class:`~retain.models.speech.SpeechModel` (features, a decoder-input channel,
next-token labels), all of one shape, so the generative learner's fit, step, guard and strategies
(replay, L2, EWC, joint, weight averaging) apply as they are: this class only says how a batch becomes
logits, what the task loss is (cross-entropy for Whisper, CTC for the CTC model), how rows are built from
clips, how rows are transcribed, and how the learner is saved (``retain.engine.persist``, kind ``speech``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from retain.engine import persist
from retain.engine.generative import SUFFIXES, GenerativeLearner
from retain.models.generative import IGNORE
from retain.models.speech import SpeechModel
from retain.strategies import Strategy
from retain.strategies.contract import Step
from retain.util import evaluating


class SpeechLearner(GenerativeLearner):
    """Fine-tunes a :class:`~retain.models.speech.SpeechModel` experience by experience.

    ``fit(experience)`` trains on its rows (``x_train`` from :meth:`rows`, ``y_train`` the labels),
    ``epochs`` passes of ``batch_size`` rows, AdamW at ``lr`` with gradient norms clipped at ``clip``;
    :meth:`transcribe` answers clips or rows. ``save``/``load`` keep the trainable weights (the decoder,
    the adapters, or all) and the strategies' state.

    >>> from retain.models.speech import SpeechModel
    >>> learner = SpeechLearner(SpeechModel("ctc-tiny", max_seconds=1.0, max_tokens=16))
    >>> x, y = learner.rows([np.zeros(8000, dtype=np.float32)], ["go"])
    >>> x.shape, y[0, :3].tolist()  # 80 log-mel bins and the token channel, 100 frames; 'g', 'o', nothing
    (torch.Size([1, 81, 100]), [8, 16, -100])
    """

    def __init__(self, model: SpeechModel, strategies: Sequence[Strategy] = (), *, lr: float = 1e-4,
                 epochs: int = 1, batch_size: int = 8, clip: float = 1.0, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(model, strategies, lr=lr, epochs=epochs, batch_size=batch_size,  # type: ignore[arg-type]
                         max_tokens=model.max_tokens, clip=clip, seed=seed, device=device)

    def rows(self, clips: Sequence[np.ndarray], texts: Sequence[str] | None = None, encode: bool = True) -> tuple[
            Tensor, Tensor]:
        """Rows and labels of 16 kHz clips and their transcripts (none: rows to transcribe); with a
        frozen encoder and ``encode``, the rows hold its states (computed once here, not at every step)."""
        x, y = self.model.rows(self.model.features(clips), texts)
        return (self.model.encoded(x) if encode else x), y

    def _logits(self, step: Step) -> Tensor:
        """Logits on the step's rows, Whisper's cut to the last labelled position of the batch."""
        width = None
        if self.model.name != "ctc-tiny":
            labelled = (step.y != IGNORE).any(0).nonzero()
            width = int(labelled.max()) + 1 if len(labelled) else 1
            step.y = step.y[:, :width]
        self.tokens_ += int((step.y != IGNORE).sum())
        step.x, step.y, step.t = step.x.to(self.device), step.y.to(self.device), step.t.to(self.device)
        return self.model(step.x, step.t, width)

    def row_loss(self, step: Step, logits: Tensor) -> Tensor:
        """The task loss when no strategy replaces it: the model's own (token cross-entropy, or CTC)."""
        return self.model.loss(logits, step.y)

    def _model_copy(self) -> torch.nn.Module:
        # A frozen encoder (and frozen base weights under LoRA) never trains: the copy a failed fit
        # restores shares them.
        frozen = {id(p): p for p in self.model.parameters() if not p.requires_grad}
        return copy.deepcopy(self.model, frozen)

    def transcribe(self, x: Tensor | Sequence[np.ndarray], batch_size: int = 16, progress: bool = False) -> list[str]:
        """Transcripts of rows (from :meth:`rows`) or of 16 kHz clips."""
        if not isinstance(x, Tensor):
            x = self.rows(list(x))[0]
        out: list[str] = []
        with evaluating(self.model), tqdm(total=len(x), disable=not progress, desc="transcribing", unit="clip",
                                          leave=False) as bar:
            for start in range(0, len(x), batch_size):
                out += self.model.transcribe(x[start:start + batch_size], batch_size)
                bar.update(min(batch_size, len(x) - start))
        return out

    def generate(self, *args: object, **kwargs: object) -> list[str]:
        raise NotImplementedError("a speech learner transcribes clips: use transcribe")

    def perplexity(self, *args: object, **kwargs: object) -> float:
        raise NotImplementedError("a speech learner is scored by its word error rate, not perplexity")

    def save(self, folder: str | Path) -> Path:
        """The trainable weights, the strategies' state and what rebuilds them, as ``folder``'s next
        generation (atomic, with checksums: ``retain.engine.persist``)."""
        names = set(self.model.saved_names())
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if k in names}
        tensors: dict[str, Tensor] = {"learner.rng": self.generator.get_state()}
        meta = {"format": persist.FORMAT_VERSION, "model": self.model.get_config(),
                "training": {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                             "clip": self.clip, "seed": self.seed},
                "strategies": persist.strategies_to_save(self.strategies, tensors),
                "seen_classes": self.seen_classes_, "steps": self.steps_, "tokens": self.tokens_}
        parts = {"model": safetensors_bytes(weights), "state": safetensors_bytes(tensors),
                 "learner": json.dumps(meta, indent=1).encode()}
        return persist.write_generation(folder, parts, SUFFIXES, kind="speech")

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> SpeechLearner:
        """A learner as :meth:`save` left it (Whisper's base weights come from their package again),
        every file checked against its checksum and the JSON against a schema with bounds first."""
        path = Path(folder)
        saved = persist.read_generation(path, "speech")
        meta = persist.saved_speech(saved.parts["learner"], path)
        state = persist.read_tensors(saved.parts["state"], path, "state")
        weights = persist.read_tensors(saved.parts["model"], path, "model")
        strategies = persist.make_strategies(meta.strategies, path)
        settings = meta.model.model_dump()
        experts = settings.pop("experts")
        model = SpeechModel(**settings)
        for e in experts:
            model.add_expert(e)
        return cls._assembled(model, set(model.saved_names()), weights, strategies, meta, state, path, device)
