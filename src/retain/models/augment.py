"""Augmentations a replay memory's samples get each time they are replayed, chosen by the model's modality.

Replaying a few hundred stored samples thousands of times over-fits them; showing each a slightly
different view every time is the first of the rehearsal "tricks" (independent buffer augmentation,
Buzzega et al. 2020, "Rethinking Experience Replay: a Bag of Tricks", ICPR). The model says what
its inputs are: images (raw pixels, batch x channels x height x width) are shifted by up to an
eighth of their side, log-mel spectrograms (``AudioCNN``) are shifted in time and get a frequency
and a time band masked (SpecAugment-style, Park et al. 2019), and anything else (token ids, text or
frozen-backbone features) is left as it is. Every random draw comes from the given generator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def modality(model: nn.Module) -> str:
    """``"log_mel"``, ``"image"`` or ``"none"``: what :func:`augment` does to ``model``'s inputs, as the
    model or its backbone declares (``inputs``); a model that declares nothing is taken to see images."""
    declared = getattr(model, "inputs", None)
    return declared if isinstance(declared, str) else getattr(getattr(model, "backbone", model), "inputs", "image")


def augment(model: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
    """``x`` augmented as ``model``'s modality allows (as is where it allows nothing).

    >>> from retain.models import make_model
    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> y = augment(make_model("mlp", (1, 4, 4), 2), x, torch.Generator().manual_seed(0))
    >>> y.shape == x.shape and not torch.equal(x, y)
    True
    >>> augment(make_model("mlp", (8,), 2), torch.ones(3, 8), torch.Generator()).equal(torch.ones(3, 8))
    True
    """
    kind = modality(model)
    if kind == "none" or x.dim() != 4 or not x.is_floating_point() or not len(x):
        return x
    return masked_spectrograms(x, generator) if kind == "log_mel" else shifted(x, generator)


def _offsets(n: int, most: int, generator: torch.Generator) -> Tensor:
    return torch.randint(-most, most + 1, (n,), generator=generator)


def shifted(x: Tensor, generator: torch.Generator, fraction: float = 0.125) -> Tensor:
    """Each image moved by its own random whole-pixel offset of at most ``fraction`` of its side in
    each direction, the edge pixels repeated into the gap (a random crop of the edge-padded image).

    >>> x = torch.zeros(1, 1, 8, 8); x[0, 0, 4, 4] = 1
    >>> int(shifted(x, torch.Generator().manual_seed(1)).sum())
    1
    """
    n, _, h, w = x.shape
    dy, dx = max(1, round(h * fraction)), max(1, round(w * fraction))
    rows = (torch.arange(h) + _offsets(n, dy, generator)[:, None]).clamp_(0, h - 1).to(x.device)
    cols = (torch.arange(w) + _offsets(n, dx, generator)[:, None]).clamp_(0, w - 1).to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around the channel slice put it last: [n, h, w, c] -> [n, c, h, w]
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def masked_spectrograms(x: Tensor, generator: torch.Generator, shift: float = 0.1, band: float = 0.15,
                        span: float = 0.1) -> Tensor:
    """Log-mel spectrograms (batch x 1 x mels x frames) shifted in time by up to ``shift`` of their
    frames (edge frames repeated), then one band of up to ``band`` of the mel bins and one span of up
    to ``span`` of the frames set to the spectrogram's mean.

    >>> x = torch.randn(2, 1, 40, 101)
    >>> masked_spectrograms(x, torch.Generator().manual_seed(0)).shape
    torch.Size([2, 1, 40, 101])
    """
    n, _, mels, frames = x.shape
    cols = (torch.arange(frames) + _offsets(n, max(1, round(frames * shift)), generator)[:, None])
    cols = cols.clamp_(0, frames - 1).to(x.device)
    out = x.gather(3, cols[:, None, None, :].expand(x.shape))
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    for axis, size, share in ((2, mels, band), (3, frames, span)):
        width = torch.randint(0, max(1, round(size * share)) + 1, (n,), generator=generator)
        start = (torch.rand(n, generator=generator) * (size - width + 1)).long()
        at = torch.arange(size)
        hit = ((at >= start[:, None]) & (at < (start + width)[:, None])).to(x.device)
        shape = (n, 1, size, 1) if axis == 2 else (n, 1, 1, size)
        out = torch.where(hit.view(shape), mean, out)
    return out
