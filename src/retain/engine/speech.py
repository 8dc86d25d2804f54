"""The learner of a speech recogniser: continual fine-tuning on (clip, transcript) rows, with strategies.

Rows are laid out by :class:`~retain.models.speech.SpeechModel` (features, a decoder-input channel,
next-token labels), all of one shape, so the row learners' fit, step, guard and save
(``retain.engine.rows``) and their strategies (replay, L2, EWC, joint, weight averaging) apply as they
are: this class only says how a batch becomes logits, what the task loss is (cross-entropy for Whisper,
CTC for the CTC model), how rows are built from clips, how rows are transcribed, and what a save keeps
(``retain.engine.persist``, kind ``speech``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from retain.engine.generative import GenerativeLearner
from retain.engine.rows import RowLearner
from retain.models.generative import IGNORE
from retain.models.speech import SpeechModel
from retain.strategies import Strategy
from retain.strategies.contract import Step
from retain.util import evaluating


class SpeechLearner(GenerativeLearner[SpeechModel]):
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

    kind = "speech"

    def __init__(self, model: SpeechModel, strategies: Sequence[Strategy] = (), *, lr: float = 1e-4,
                 epochs: int = 1, batch_size: int = 8, clip: float = 1.0, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(model, strategies, lr=lr, epochs=epochs, batch_size=batch_size,
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
        logits: Tensor = self.model(step.x, step.t, width)
        return logits

    def row_loss(self, step: Step, logits: Tensor) -> Tensor:
        """The task loss when no strategy replaces it: the model's own (token cross-entropy, or CTC)."""
        return self.model.loss(logits, step.y)

    def _model_copy(self) -> torch.nn.Module:
        return RowLearner._model_copy(self)  # what is frozen now is shared (the encoder), not what is named LoRA

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

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Self:
        """A learner as :meth:`save` left it (Whisper's base weights come from their package again)."""
        return super(GenerativeLearner, cls).load(folder, device)  # the row learners' load, not the language model's

    @classmethod
    def _saved_names(cls, model: SpeechModel) -> set[str]:
        return set(model.saved_names())  # the decoder, the adapters, or all

    def _settings(self) -> dict[str, Any]:
        return RowLearner._settings(self)  # the model holds max_tokens

    def _own_meta(self) -> dict[str, Any]:
        return {"tokens": self.tokens_}

    @classmethod
    def _model_of(cls, meta: Any) -> SpeechModel:
        settings = meta.model.model_dump()
        experts = settings.pop("experts")
        model = SpeechModel(**settings)
        for e in experts:
            model.add_expert(e)
        return model
