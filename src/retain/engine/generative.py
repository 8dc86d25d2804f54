"""The learner of a generative language model: continual fine-tuning on (prompt, target) pairs, with strategies.

Rows are prompt + target + end-of-text tokens, padded with ``-1`` to one width, and labels are
the next token at each target position (``-100`` elsewhere): every row has the same shape, so a
replay memory stores and mixes them like any other samples. The step is the classifier
learner's (``retain.engine.learner.Trainer``): ``batch`` hooks, logits, a task loss (one
strategy's, or the cross-entropy, here the token mean), ``loss`` terms, ``after_backward`` hooks,
the optimizer (AdamW, after a gradient clip). A fit that fails or diverges leaves the learner as
it was, and saves go through ``retain.engine.persist`` (atomic, checksummed, kind ``generative``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from retain.data import Experience
from retain.engine import persist
from retain.engine.learner import Trainer
from retain.models.generative import IGNORE, PAD, LanguageModel
from retain.strategies import STRATEGIES, Strategy
from retain.strategies.contract import ExperienceContext, Ranks, Step
from retain.util import evaluating

SUFFIXES = {"model": "safetensors", "state": "safetensors", "learner": "json"}


def check_generative(strategy: Strategy) -> None:
    """Refuse, with the reason, a strategy the generative learner cannot run (one that does not
    declare ``generative``: it needs class labels, features or heads)."""
    if not strategy.generative:
        allowed = ", ".join(name for name, cls in STRATEGIES.items() if cls.generative)
        raise ValueError(f"{strategy.name} does not apply to a generative language model (it needs class labels, "
                         f"features or heads); choose from: {allowed}")
    memory = strategy.memory()
    if memory is not None and memory.policy != "reservoir":
        raise ValueError(f"{strategy.name}: sequences have no class to balance a memory by; "
                         f"use policy: reservoir (got {memory.policy})")


class GenerativeLearner(Trainer):
    """Fine-tunes a :class:`LanguageModel` experience by experience.

    ``fit(experience)`` trains on its token rows (``x_train``: inputs, ``y_train``: labels,
    ``t_train``: direction ids), ``epochs`` passes of ``batch_size`` rows, AdamW at ``lr`` with
    gradient norms clipped at ``clip``. ``generate`` continues prompts greedily; ``perplexity``
    scores plain text. ``save``/``load`` keep the trainable weights and the strategies' state.
    The hooks and the step are the classifier learner's (:class:`~retain.engine.learner.Trainer`);
    this class lays the rows out (:meth:`_logits`) and clips before AdamW steps (:meth:`_update`).

    >>> from retain.models.generative import LanguageModel
    >>> learner = GenerativeLearner(LanguageModel("tiny", "lora"), max_tokens=24)
    >>> x, y = learner.encode(["ab"], ["cd"])
    >>> x.shape, y[0, :4].tolist()  # 'a' predicts nothing, 'b' predicts 'c', 'c' predicts 'd', 'd' the end
    (torch.Size([1, 24]), [-100, 99, 100, 256])
    """

    _restored = ("seen_classes_", "task_classes_", "directions", "steps_", "tokens_")

    def __init__(self, model: LanguageModel, strategies: Sequence[Strategy] = (), *, lr: float = 3e-4,
                 epochs: int = 1, batch_size: int = 8, max_tokens: int = 64, clip: float = 1.0, seed: int = 0,
                 device: str = "cpu") -> None:
        for s in strategies:
            check_generative(s)
        if model.adaptation == "experts" and any(s.name != "finetune" for s in strategies):
            raise ValueError("experts keep each direction in an adapter of its own: they take no strategy (replay, "
                             "penalties and joint training need a shared adapter, adaptation: lora, or full)")
        self.strategies = list(strategies)
        self._bind()
        self.model = model.to(device)
        self.lr, self.epochs, self.batch_size, self.max_tokens, self.clip = lr, epochs, batch_size, max_tokens, clip
        self.seed, self.device = seed, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.ranks = Ranks()
        self.optimizer: torch.optim.Optimizer | None = None
        self._trainable = self._requires_grad()  # what the optimizer steps (experts: the direction's adapter)
        self.seen_classes_: list[int] = []  # directions learned so far (a direction is the strategies' "class")
        self.task_classes_: dict[int, list[int]] = {}
        self.directions: dict[str, int] = {}  # a direction's name (e.g. a target language) -> its id
        self.steps_ = 0
        self.tokens_ = 0  # target tokens trained on (replayed ones included)

    # What strategies may read (retain.strategies.contract.LearnerView); trainable is Trainer's.
    @property
    def bulk_size(self) -> int:
        return self.batch_size

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
            yield

    def features(self, x: Tensor, t: Tensor | None = None, batch_size: int = 1024) -> Tensor:
        raise NotImplementedError("a generative model has no feature vectors for a strategy to use")

    def predict_logits(self, x: Tensor, t: Tensor | int | None = None, batch_size: int = 1024) -> Tensor:
        raise NotImplementedError("a generative model has no class logits for a strategy to use")

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

    def fit(self, experience: Experience, progress: bool = False) -> GenerativeLearner:
        """Train on one experience (all rows are one direction, or several for joint training). A
        fit that fails midway, a diverging one included (``Diverged``: the loss turned NaN or
        infinite), leaves the weights, the strategies' state and the counters as they were."""
        return self._guarded(lambda: self._fit(experience, progress))

    def _fit(self, experience: Experience, progress: bool) -> GenerativeLearner:
        ctx = ExperienceContext(experience)
        directions = sorted(set(experience.train_tasks().tolist()))
        for d in directions:
            self.model.add_expert(d)  # experts: a new direction gets its adapter (the others freeze)
        self._experience_hook("before_experience", ctx)
        x, y, t = ctx.train_set
        self._trainable = self._requires_grad()
        self.optimizer = torch.optim.AdamW(self._trainable, lr=self.lr, weight_decay=0.0)
        self.model.train()
        steps = self.epochs * math.ceil(len(y) / self.batch_size)
        with tqdm(total=steps, disable=not progress, desc=f"experience {experience.id}", unit="step",
                  leave=False) as bar:
            for epoch in range(self.epochs):
                order = torch.randperm(len(y), generator=self.generator)
                for start in range(0, len(y), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    self._train_step(Step(x[rows], y[rows], t[rows], incoming=len(rows), fresh=epoch == 0,
                                          experience_id=experience.id, rows=rows, source=(x, y, t)))
                    bar.update(1)
        self.optimizer = None  # AdamW's moments (twice the trained weights) are not kept between experiences
        self._check_finite(experience)
        self._experience_hook("after_experience", ctx)
        self.seen_classes_ = sorted(set(self.seen_classes_) | set(directions))
        for d in directions:
            self.task_classes_[d] = [d]
        return self

    def train_step(self, step: Step, optimizer: torch.optim.Optimizer) -> float:
        """One step of ``optimizer`` (over :attr:`trainable`) on ``step``'s rows and whatever the
        ``batch`` hooks add, as ``fit`` takes it; returns the loss (``benchmarks/llm_mt.py`` times it)."""
        self.model.train()
        self.optimizer = optimizer
        return self._train_step(step)

    def _logits(self, step: Step) -> Tensor:
        """Logits ``[rows, vocabulary, width]``, on rows cut to the longest one (no position past it is
        computed) and moved to the device; the step carries them so, for the loss and the hooks."""
        width = max(int((step.x != PAD).sum(1).max()), 1)
        y = step.y[:, :width]
        self.tokens_ += int((y != IGNORE).sum())  # counted before the move: no wait on the device
        step.x, step.y, step.t = step.x[:, :width].to(self.device), y.to(self.device), step.t.to(self.device)
        return self.model(step.x, step.t)

    def _update(self, step: Step) -> None:
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self._trainable, self.clip)
        self.optimizer.step()

    def _model_copy(self) -> torch.nn.Module:
        # Under adapters the base weights never train: the copy a failed fit restores shares them
        # (SmolLM2's 135M parameters are not duplicated for a fit).
        frozen = {} if self.model.adaptation == "full" else {
            id(p): p for k, p in self.model.named_parameters() if "lora_" not in k}
        return copy.deepcopy(self.model, frozen)

    def generate(self, prompts: Sequence[str], direction: int | None = None, max_new_tokens: int = 48,
                 batch_size: int = 32, progress: bool = False, desc: str = "generating") -> list[str]:
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
        x, y = self.encode([""] * len(texts), list(texts)) if texts else (None, None)
        if x is None:
            raise ValueError("perplexity needs at least one text")
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

    def save(self, folder: str | Path) -> Path:
        """The trainable weights (all of them for full fine-tuning, the adapters otherwise), the
        strategies' state and what rebuilds them, as ``folder``'s next generation (atomic, with
        checksums: ``retain.engine.persist``; a crash mid-save leaves the previous save whole)."""
        names = _saved_names(self.model)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if k in names}
        tensors: dict[str, Tensor] = {"learner.rng": self.generator.get_state()}  # training continues alike
        meta = {"format": persist.FORMAT_VERSION, "model": self.model.get_config(),
                "training": {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                             "max_tokens": self.max_tokens, "clip": self.clip, "seed": self.seed},
                "strategies": persist.strategies_to_save(self.strategies, tensors),
                "seen_classes": self.seen_classes_, "directions": self.directions, "steps": self.steps_,
                "tokens": self.tokens_}
        parts = {"model": safetensors_bytes(weights), "state": safetensors_bytes(tensors),
                 "learner": json.dumps(meta, indent=1).encode()}
        return persist.write_generation(folder, parts, SUFFIXES, kind="generative")

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> GenerativeLearner:
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
        m = meta.model
        model = LanguageModel(m.name, m.adaptation, m.lora_rank, m.seed)
        for d in m.experts:
            model.add_expert(d)
        learner = cls._assembled(model, _saved_names(model), weights, strategies, meta, state, path, device)
        learner.directions = meta.directions
        return learner

    @classmethod
    def _assembled(cls, model: torch.nn.Module, names: set[str], weights: dict[str, Tensor],
                   strategies: list[Strategy], meta: Any, state: dict[str, Tensor], path: Path, device: str) -> Any:
        """A learner of ``model`` holding its saved ``weights`` (the ``names`` a save keeps, checked
        against them), its strategies' state, random state and counters, as a validated ``meta`` says."""
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k in names}
        found = {k: tuple(v.shape) for k, v in weights.items()}
        if found != expected:
            diff = sorted(set(expected.items()) ^ set(found.items()))[0]
            raise persist.LoadError(f"{path}: the model config does not describe the saved weights (first "
                                    f"difference: {diff[0]} {diff[1]})")
        model.load_state_dict(weights, strict=False)
        try:
            learner = cls(model, strategies, device=device, **meta.training.model_dump())
        except ValueError as err:
            raise persist.LoadError(f"{path}: the saved strategies do not fit this model ({err})") from None
        persist.set_generator(learner.generator, state, path)
        persist.load_states(strategies, meta.strategies, state, learner, path)
        learner.seen_classes_, learner.steps_, learner.tokens_ = meta.seen_classes, meta.steps, meta.tokens
        learner.task_classes_ = {d: [d] for d in learner.seen_classes_}
        return learner


def _saved_names(model: LanguageModel) -> set[str]:
    """The weights a save keeps: every one under full fine-tuning, the adapters' otherwise."""
    if model.adaptation == "full":
        return set(model.trainable_names())
    return {k for k in model.state_dict() if "lora_" in k}


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
