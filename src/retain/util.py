"""Generic helpers every layer may use: evaluation mode, batched no-grad passes, numbers in words."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


def auto_threads() -> int:
    """Torch CPU threads for a run: one per core this process may use that is not already busy
    (the 1-minute load average at the start), at least one.

    Torch's default, one per core, collapses when other jobs share the cores: its OpenMP threads
    wait on each other at every operation. Measured on 2 cores with 6 busy processes beside the
    test suite's strategy tests (14 s alone with either 1 or 2 threads): 56 s with 1 thread, over
    300 s with 2. Idle cores still pay: EfficientNet-Lite0 features of 600 images take 0.8 s with
    2 threads and 1.8 s with 1.

    >>> 1 <= auto_threads() <= (os.cpu_count() or 1)
    True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): all cores
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def slug(text: str) -> str:
    """``text`` as a safe file name: runs of other characters become ``_``, no leading dots.

    >>> slug("../../etc/passwd"), slug("replay+lwf"), slug("a b")
    ('etc_passwd', 'replay_lwf', 'a_b')
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).lstrip("._") or "_"


TOKEN_BUDGET = 2048  # at most this many token slots (rows x the batch's longest row) per batch of texts


def batch_bounds(x: Tensor, batch_size: int, tokens: bool) -> tuple[Tensor, list[tuple[int, int]]]:
    """The order to encode ``x``'s rows in and the (start, end) of each batch in that order.

    Images and sounds go ``batch_size`` rows at a time, in order. Token inputs (0 = padding, on
    the right) are sorted longest first and batched up to :data:`TOKEN_BUDGET` token slots as
    well as ``batch_size`` rows, so short texts go many to a batch and long ones few: padding
    stays small even when only a handful of texts arrive, whose single mixed batch would
    otherwise be padded to its longest member (MiniLM on 112 fortunes: 13.1 ms a text in one
    batch of 112, 5.7 ms in budgeted batches; 6.4 and 5.4 ms on 1,120).

    >>> ids = torch.tensor([[5, 0, 0, 0], [5, 6, 7, 8], [5, 6, 0, 0]])
    >>> order, bounds = batch_bounds(ids, batch_size=128, tokens=True)
    >>> order.tolist(), bounds
    ([1, 2, 0], [(0, 3)])
    >>> batch_bounds(torch.ones(5, 4, dtype=torch.long), batch_size=2, tokens=True)[1]
    [(0, 2), (2, 4), (4, 5)]
    """
    n = len(x)
    if not tokens:
        return torch.arange(n), [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    lengths = (x != 0).sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    longest = lengths[order].clamp_min(1).tolist()
    bounds, start = [], 0
    while start < n:  # sorted longest first: a batch's first row sets its padded width
        end = min(n, start + max(1, min(batch_size, TOKEN_BUDGET // longest[start])))
        bounds.append((start, end))
        start = end
    return order, bounds


def module_device(module: nn.Module) -> torch.device:
    """The device a module's buffers (or, without any, its parameters) live on."""
    return next((b.device for b in module.buffers()), None) or next(module.parameters()).device


def encoder_batches(encoder: nn.Module, x: Tensor, batch_size: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """:func:`batch_bounds` for ``encoder``: texts if it takes tokens, and on the CPU at most its
    ``cpu_batch_rows`` rows a batch when it states one (an image CNN does: many images at once
    spill its activations out of the CPU caches)."""
    cap = getattr(encoder, "cpu_batch_rows", None)
    if cap is not None and module_device(encoder).type == "cpu":
        batch_size = min(batch_size, cap)
    return batch_bounds(x, batch_size, getattr(encoder, "takes_tokens", False))


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in evaluation mode for the block, then back in the mode it was in. A module
    already in evaluation mode is left alone (threads predicting at once never flip its mode)."""
    if not any(m.training for m in module.modules()):
        yield module
        return
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def in_batches(fn: Callable[..., Tensor], encoder: nn.Module, x: Tensor, batch_size: int, device: torch.device,
               t: Tensor | None = None, desc: str = "features", progress: bool = False) -> Tensor:
    """``fn(x)`` (or ``fn(x, t)`` with task ids) over the batches :func:`encoder_batches` cuts for
    ``encoder``, run on ``device``; the outputs come back on the CPU, in ``x``'s row order."""
    order, bounds = encoder_batches(encoder, x, batch_size)
    out = []
    for start, end in tqdm(bounds, desc=desc, unit="batch", disable=not progress, leave=False):
        rows = order[start:end]
        args = (x[rows],) if t is None else (x[rows], t[rows])
        out.append(fn(*(a.to(device) for a in args)).float().cpu())
    if not out:
        return torch.empty(0)
    stacked = torch.cat(out)
    result = torch.empty_like(stacked)
    result[order] = stacked
    return result


TITLES = {"mister": "mr", "missus": "mrs"}  # as Whisper writes them ("Mr.")
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def _spelled(number: int) -> str:
    """A whole number below a million in words."""
    if number < 20:
        return _UNITS[number]
    if number < 100:
        return _TENS[number // 10 - 2] + ("" if number % 10 == 0 else " " + _UNITS[number % 10])
    if number < 1000:
        rest = number % 100
        return _UNITS[number // 100] + " hundred" + ("" if rest == 0 else " " + _spelled(rest))
    rest = number % 1000
    return _spelled(number // 1000) + " thousand" + ("" if rest == 0 else " " + _spelled(rest))


def spell_numbers(text: str) -> str:
    """Digits as spoken: a number below a million as one (thousands separators dropped), a longer
    string digit by digit (a phone number). Whisper writes "10 of clubs" for "ten of clubs".

    >>> spell_numbers("10 of clubs, 1,500 cards, call 5550100")
    'ten of clubs, one thousand five hundred cards, call five five five zero one zero zero'
    """
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return re.sub(r"\d+", lambda m: _spelled(int(m.group())) if len(m.group()) < 7
                  else " ".join(_UNITS[int(d)] for d in m.group()), text)
