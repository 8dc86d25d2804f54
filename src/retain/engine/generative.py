"""The learner of a generative language model: continual fine-tuning on (prompt, target) pairs, with strategies.

Rows are prompt + target + end-of-text tokens, padded with ``-1`` to one width, and labels are
the next token at each target position (``-100`` elsewhere): every row has the same shape, so a
replay memory stores and mixes them like any other samples. The step is the classifier
learner's: ``batch`` hooks, logits, a task loss (one strategy's, or the token-mean
cross-entropy), ``loss`` terms, ``after_backward`` hooks, the optimizer (AdamW).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from retain.data import Experience
from retain.models.generative import IGNORE, PAD, LanguageModel
from retain.strategies import STRATEGIES, Strategy, implements, make_strategy
from retain.strategies.contract import ExperienceContext, Ranks, Step
from retain.util import evaluating


def check_strategy(strategy: Strategy) -> None:
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


class GenerativeLearner:
    """Fine-tunes a :class:`LanguageModel` experience by experience.

    ``fit(experience)`` trains on its token rows (``x_train``: inputs, ``y_train``: labels,
    ``t_train``: direction ids), ``epochs`` passes of ``batch_size`` rows, AdamW at ``lr`` with
    gradient norms clipped at ``clip``. ``generate`` continues prompts greedily; ``perplexity``
    scores plain text. ``save``/``load`` keep the trainable weights and the strategies' state.

    >>> from retain.models.generative import LanguageModel
    >>> learner = GenerativeLearner(LanguageModel("tiny", "lora"), max_tokens=24)
    >>> x, y = learner.encode(["ab"], ["cd"])
    >>> x.shape, y[0, :4].tolist()  # 'a' predicts nothing, 'b' predicts 'c', 'c' predicts 'd', 'd' the end
    (torch.Size([1, 24]), [-100, 99, 100, 256])
    """

    def __init__(self, model: LanguageModel, strategies: Sequence[Strategy] = (), *, lr: float = 3e-4,
                 epochs: int = 1, batch_size: int = 8, max_tokens: int = 64, clip: float = 1.0, seed: int = 0,
                 device: str = "cpu") -> None:
        for s in strategies:
            check_strategy(s)
        if model.adaptation == "experts" and any(s.name != "finetune" for s in strategies):
            raise ValueError("experts keep each direction in an adapter of its own: they take no strategy (replay, "
                             "penalties and joint training need a shared adapter, adaptation: lora, or full)")
        if sum(implements(s, "task_loss") for s in strategies) > 1:
            raise ValueError("at most one strategy of a composition may replace the task loss")
        self.model, self.strategies = model.to(device), list(strategies)
        self.lr, self.epochs, self.batch_size, self.max_tokens, self.clip = lr, epochs, batch_size, max_tokens, clip
        self.seed, self.device = seed, torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.ranks = Ranks()
        self.seen_classes_: list[int] = []  # directions learned so far (a direction is the strategies' "class")
        self.task_classes_: dict[int, list[int]] = {}
        self.directions: dict[str, int] = {}  # a direction's name (e.g. a target language) -> its id
        self.steps_ = 0
        self.tokens_ = 0  # target tokens trained on (replayed ones included)

    # What strategies may read (retain.strategies.contract.LearnerView).
    @property
    def trainable(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

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
        """Train on one experience (all rows are one direction, or several for joint training)."""
        ctx = ExperienceContext(experience)
        directions = sorted(set(experience.train_tasks().tolist()))
        for d in directions:
            self.model.add_expert(d)  # experts: a new direction gets its adapter (the others freeze)
        self._hooks("before_experience", ctx)
        x, y, t = ctx.train_set
        optimizer = torch.optim.AdamW(self.trainable, lr=self.lr, weight_decay=0.0)
        steps = self.epochs * math.ceil(len(y) / self.batch_size)
        with tqdm(total=steps, disable=not progress, desc=f"experience {experience.id}", unit="step",
                  leave=False) as bar:
            for epoch in range(self.epochs):
                order = torch.randperm(len(y), generator=self.generator)
                for start in range(0, len(y), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    step = Step(x[rows], y[rows], t[rows], incoming=len(rows), fresh=epoch == 0,
                                experience_id=experience.id, rows=rows, source=(x, y, t))
                    self.train_step(step, optimizer)
                    bar.update(1)
        self._hooks("after_experience", ctx)
        self.seen_classes_ = sorted(set(self.seen_classes_) | set(directions))
        for d in directions:
            self.task_classes_[d] = [d]
        return self

    def train_step(self, step: Step, optimizer: torch.optim.Optimizer) -> float:
        """One optimizer step on ``step``'s rows and whatever the ``batch`` hooks add."""
        self.model.train()
        for s in self.strategies:
            if implements(s, "batch"):
                step = s.batch(self, step)
        width = max(int((step.x != PAD).sum(1).max()), 1)  # the longest row: no position past it is computed
        x, y, t = step.x[:, :width].to(self.device), step.y[:, :width].to(self.device), step.t.to(self.device)
        step.x, step.y, step.t = x, y, t
        logits = self.model(x, t)
        task = next((s for s in self.strategies if implements(s, "task_loss")), None)
        loss = task.task_loss(self, step, logits) if task else F.cross_entropy(logits, y)
        for s in self.strategies:
            if implements(s, "loss"):
                loss = loss + s.loss(self, step, logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for s in self.strategies:
            if implements(s, "after_backward"):
                s.after_backward(self, step)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
        optimizer.step()
        self.steps_ += 1
        self.tokens_ += int((y != IGNORE).sum())
        return loss.item()

    def _hooks(self, hook: str, ctx: ExperienceContext) -> None:
        for s in self.strategies:
            if implements(s, hook):
                with ctx.written_by(s):
                    getattr(s, hook)(self, ctx)

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
    def perplexity(self, texts: Sequence[str], batch_size: int = 16) -> float:
        """``exp`` of the mean next-token loss over ``texts`` (each followed by the end token), with
        no direction tag: experts score it with the base model."""
        x, y = self.encode([""] * len(texts), list(texts)) if texts else (None, None)
        if x is None:
            raise ValueError("perplexity needs at least one text")
        total, count = 0.0, 0
        with evaluating(self.model):
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size].to(self.device), y[start:start + batch_size].to(self.device)
                total += float(F.cross_entropy(self.model(xb), yb, reduction="sum"))
                count += int((yb != IGNORE).sum())
        return math.exp(total / count)

    def save(self, folder: str | Path) -> Path:
        """The trainable weights (all of them for full fine-tuning, the adapters otherwise), the
        strategies' state and what rebuilds them, in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = set(self.model.trainable_names()) if self.model.adaptation == "full" else {
            k for k in self.model.state_dict() if "lora_" in k}
        weights = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if k in names}
        save_file(weights, folder / "weights.safetensors")
        state: dict[str, Tensor] = {"generator": self.generator.get_state()}  # training continues alike
        meta: dict[str, Any] = {}
        for i, s in enumerate(self.strategies):
            for k, v in s.state_dict().items():
                if isinstance(v, Tensor):
                    state[f"{i}.{k}"] = v.detach().cpu().contiguous()
                else:
                    meta[f"{i}.{k}"] = v
        save_file(state, folder / "strategies.safetensors")
        config = {"model": self.model.get_config(), "strategies": [{"name": s.name, **s.get_config()}
                                                                    for s in self.strategies],
                  "training": {"lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                               "max_tokens": self.max_tokens, "clip": self.clip, "seed": self.seed},
                  "state": meta, "seen": self.seen_classes_, "directions": self.directions, "steps": self.steps_,
                  "tokens": self.tokens_}
        (folder / "learner.json").write_text(json.dumps(config, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> GenerativeLearner:
        """A learner as :meth:`save` left it (the base weights come from their package again)."""
        folder = Path(folder)
        try:
            config = json.loads((folder / "learner.json").read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder}: not a saved generative learner ({e})") from None
        m = config["model"]
        model = LanguageModel(m["name"], m["adaptation"], m["lora_rank"], m["seed"])
        for d in m["experts"]:
            model.add_expert(d)
        weights = load_file(folder / "weights.safetensors")
        missing = set(weights) - set(model.state_dict())
        if missing:
            raise ValueError(f"{folder}: weights for layers this model lacks: {sorted(missing)[:3]}")
        model.load_state_dict(weights, strict=False)
        strategies = [make_strategy(s["name"], **{k: v for k, v in s.items() if k != "name"})
                      for s in config["strategies"]]
        learner = cls(model, strategies, device=device, **config["training"])
        state = load_file(folder / "strategies.safetensors")
        learner.generator.set_state(state.pop("generator"))
        for i, s in enumerate(strategies):
            own = {k.split(".", 1)[1]: v.to(learner.device) for k, v in state.items() if k.split(".", 1)[0] == str(i)}
            own |= {k.split(".", 1)[1]: v for k, v in config["state"].items() if k.split(".", 1)[0] == str(i)}
            s.load_state_dict(own, learner)
        learner.seen_classes_, learner.steps_, learner.tokens_ = config["seen"], config["steps"], config["tokens"]
        learner.task_classes_ = {d: [d] for d in learner.seen_classes_}
        learner.directions = config.get("directions", {})
        return learner

