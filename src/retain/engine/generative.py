"""The learner of a generative language model: continual fine-tuning on (prompt, target) pairs, with strategies.

Rows are prompt + target + end-of-text tokens, padded with ``-1`` to one width, and labels are
the next token at each target position (``-100`` elsewhere): every row has the same shape, so a
replay memory stores and mixes them like any other samples. The fit and the step are those of every
row learner (``retain.engine.rows``): ``batch`` hooks, logits, a task loss (one strategy's, or the
cross-entropy, here the token mean), ``loss`` terms, ``after_backward`` hooks, AdamW after a gradient
clip; a fit that fails or diverges leaves the learner as it was. Saves go through
``retain.engine.persist`` (atomic, checksummed, kind ``generative``).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from typing_extensions import TypeVar  # a default (PEP 696) before Python 3.13

from retain.data import Experience
from retain.engine import persist
from retain.engine.rows import RowLearner, check_strategy
from retain.models.generative import IGNORE, PAD, LanguageModel
from retain.strategies import Strategy
from retain.strategies.contract import Step
from retain.util import evaluating

if TYPE_CHECKING:
    from retain.models.speech import SpeechModel

# The model: a language model (``GenerativeLearner`` alone means one), or a speech recogniser
# (``retain.engine.speech``), whose rows are laid out alike.
G = TypeVar("G", bound="LanguageModel | SpeechModel", default=LanguageModel)


def check_generative(strategy: Strategy) -> None:
    """Refuse, with the reason, a strategy the generative learner cannot run (one that does not
    declare ``generative``: it needs class labels, features or heads)."""
    check_strategy(strategy, lambda cls: cls.generative, "a generative language model")


class GenerativeLearner(RowLearner[G]):
    """Fine-tunes a :class:`LanguageModel` experience by experience.

    ``fit(experience)`` trains on its token rows (``x_train``: inputs, ``y_train``: labels,
    ``t_train``: direction ids), ``epochs`` passes of ``batch_size`` rows, AdamW at ``lr`` with
    gradient norms clipped at ``clip``. ``generate`` continues prompts greedily; ``perplexity``
    scores plain text. ``save``/``load`` keep the trainable weights and the strategies' state.
    The fit, the hooks and the step are :class:`~retain.engine.rows.RowLearner`'s; this class lays
    the rows out (:meth:`_logits`) and gives each new direction its adapter (experts).

    >>> from retain.models.generative import LanguageModel
    >>> learner = GenerativeLearner(LanguageModel("tiny", "lora"), max_tokens=24)
    >>> x, y = learner.encode(["ab"], ["cd"])
    >>> x.shape, y[0, :4].tolist()  # 'a' predicts nothing, 'b' predicts 'c', 'c' predicts 'd', 'd' the end
    (torch.Size([1, 24]), [-100, 99, 100, 256])
    """

    _restored = ("seen_classes_", "task_classes_", "directions", "steps_", "tokens_")
    kind = "generative"

    def __init__(self, model: G, strategies: Sequence[Strategy] = (), *, lr: float = 3e-4,
                 epochs: int = 1, batch_size: int = 8, max_tokens: int = 64, clip: float = 1.0, seed: int = 0,
                 device: str = "cpu") -> None:
        for s in strategies:
            check_generative(s)
        if model.adaptation == "experts" and any(s.name != "finetune" for s in strategies):
            raise ValueError("experts keep each direction in an adapter of its own: they take no strategy (replay, "
                             "penalties and joint training need a shared adapter, adaptation: lora, or full)")
        super().__init__(model, strategies, lr=lr, epochs=epochs, batch_size=batch_size, clip=clip, seed=seed,
                         device=device)
        self.max_tokens = max_tokens
        self.directions: dict[str, int] = {}  # a direction's name (e.g. a target language) -> its id
        self.tokens_ = 0  # target tokens trained on (replayed ones included)

    def encode(self, prompts: Sequence[str], targets: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token rows ``prompt + target + end`` and their labels, ``max_tokens`` wide. A row too
        long loses the end of its target (and its end token); a prompt alone too long is refused."""
        tok = self.model.tokenizer
        x = torch.full((len(prompts), self.max_tokens), PAD, dtype=torch.long)
        y = torch.full_like(x, IGNORE)
        for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
            p = tok.encode(prompt)
            if len(p) >= self.max_tokens:
                raise ValueError(f"prompt {i} has {len(p)} tokens, max_tokens is {self.max_tokens}: raise it")
            row = (p + tok.encode(target) + [tok.eos_id])[:self.max_tokens]
            x[i, :len(row)] = torch.tensor(row)
            first = max(len(p), 1)  # a text with no prompt: its first token has nothing before it
            y[i, first - 1:len(row) - 1] = torch.tensor(row[first:])
        return x, y

    def _begin(self, experience: Experience) -> list[int]:
        """The experience's directions (its rows' task ids); experts: a new one gets its adapter (the others freeze)."""
        directions = sorted(set(experience.train_tasks().tolist()))
        for d in directions:
            self.model.add_expert(d)
        return directions

    def _logits(self, step: Step) -> Tensor:
        """Logits ``[rows, vocabulary, width]``, on rows cut to the longest one (no position past it is
        computed) and moved to the device; the step carries them so, for the loss and the hooks."""
        width = max(int((step.x != PAD).sum(1).max()), 1)
        y = step.y[:, :width]
        self.tokens_ += int((y != IGNORE).sum())  # counted before the move: no wait on the device
        step.x, step.y, step.t = step.x[:, :width].to(self.device), y.to(self.device), step.t.to(self.device)
        logits: Tensor = self.model(step.x, step.t)
        return logits

    def _model_copy(self) -> torch.nn.Module:
        # Under adapters the base weights never train: the copy a failed fit restores shares them
        # (SmolLM2's 135M parameters are not duplicated for a fit). Adapters are copied, frozen or not:
        # an expert frozen now trains again when its direction comes back.
        frozen = {} if self.model.adaptation == "full" else {
            id(p): p for k, p in self.model.named_parameters() if "lora_" not in k}
        return copy.deepcopy(self.model, frozen)

    def generate(self: GenerativeLearner[LanguageModel], prompts: Sequence[str], direction: int | None = None,
                 max_new_tokens: int = 48, batch_size: int = 32, progress: bool = False,
                 desc: str = "generating") -> list[str]:
        """Greedy continuations of ``prompts`` (through ``direction``'s adapter for experts), in
        batches of prompts of similar length."""
        tok = self.model.tokenizer
        encoded = [tok.encode(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        out: list[str] = [""] * len(prompts)
        with evaluating(self.model), tqdm(total=len(prompts), disable=not progress, desc=desc, unit="text",
                                          leave=False) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start:start + batch_size]
                for i, ids in zip(chunk, self.model.generate([encoded[i] for i in chunk], max_new_tokens, direction),
                                  strict=True):
                    out[i] = tok.decode(ids).strip()
                bar.update(len(chunk))
        return out

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], batch_size: int = 16, end: bool = True) -> float:
        """``exp`` of the mean next-token loss over ``texts`` (each followed by the end token, which
        ``end=False`` leaves out of the loss: a model fine-tuned on one-line messages learns to end
        lines early, and that one token a text can hide the rest), with no direction tag: experts
        score it with the base model."""
        if not texts:
            raise ValueError("perplexity needs at least one text")
        x, y = self.encode([""] * len(texts), list(texts))
        if not end:
            last = (x != PAD).sum(1) - 1  # each row's last token: its end token unless the row was cut
            rows = torch.arange(len(x))
            ended = (x[rows, last] == self.model.tokenizer.eos_id) & (last > 0)
            y[rows[ended], last[ended] - 1] = IGNORE
        total, count = 0.0, 0
        with evaluating(self.model):
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size].to(self.device), y[start:start + batch_size].to(self.device)
                total += float(F.cross_entropy(self.model(xb), yb, reduction="sum"))
                count += int((yb != IGNORE).sum())
        return math.exp(total / count)

    @classmethod
    def _saved_names(cls, model: G) -> set[str]:
        """Every weight under full fine-tuning, the adapters' otherwise (the base model's package holds the rest)."""
        if model.adaptation == "full":
            return set(model.trainable_names())
        return {k for k in model.state_dict() if "lora_" in k}

    def _settings(self) -> dict[str, Any]:
        return super()._settings() | {"max_tokens": self.max_tokens}

    def _own_meta(self) -> dict[str, Any]:
        return {"directions": self.directions, "tokens": self.tokens_}

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Self:
        """A learner as :meth:`save` left it (the base weights come from their package again). Every
        file is checked against its checksum and the JSON against a schema with bounds before
        anything is built; a problem raises ``persist.LoadError`` naming the file. Saves of the first
        format (``learner.json``, ``weights.safetensors``, ``strategies.safetensors``) load too."""
        path = Path(folder)
        saved = persist.read_generation(path, "generative")
        data, state = saved.parts["learner"], persist.read_tensors(saved.parts["state"], path, "state")
        if saved.legacy:
            data, state = _first_format(data, state, path)
        meta = persist.saved_generative(data, path)
        strategies = persist.make_strategies(meta.strategies, path)
        weights = persist.read_tensors(saved.parts["model"], path, "model")
        model = cls._model_of(meta)
        learner = cls._assembled(model, cls._saved_names(model), weights, strategies, meta, state, path, device)
        learner.directions = meta.directions
        return learner

    @classmethod
    def _model_of(cls, meta: Any) -> G:
        m = meta.model
        model = LanguageModel(m.name, m.adaptation, m.lora_rank, m.seed)
        for d in m.experts:
            model.add_expert(d)
        return cast(G, model)  # a language model's learner: the speech learner builds its own model

    def _loaded(self, meta: Any) -> None:
        super()._loaded(meta)
        self.tokens_ = meta.tokens


def _first_format(data: bytes, state: dict[str, Tensor], path: Path) -> tuple[bytes, dict[str, Tensor]]:
    """A save of the first generative format (before ``persist``: settings, strategies' JSON state as
    ``<position>.<key>``, and the generator as ``generator``), rewritten as today's layout."""
    try:
        old = json.loads(data)
        strategies = [{"name": s["name"], "params": {k: v for k, v in s.items() if k != "name"}, "state": {}}
                      for s in old["strategies"]]
        for key, value in old["state"].items():
            i, name = key.split(".", 1)
            strategies[int(i)]["state"][name] = value
        meta = {"format": persist.FORMAT_VERSION, "model": old["model"], "training": old["training"],
                "strategies": strategies, "seen_classes": old["seen"], "directions": old.get("directions", {}),
                "steps": old["steps"], "tokens": old["tokens"]}
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise persist.LoadError(f"{path}/learner.json: not a generative learner's first format ({err!r})") from None
    state = {("learner.rng" if k == "generator" else k): v for k, v in state.items()}
    return json.dumps(meta).encode(), state
