"""Features of a frozen backbone, computed once in batches and cached on disk.

The cache key is the backbone id plus a SHA-256 of the input tensor (shape, dtype, bytes), so
a changed input or a different backbone is a miss. Each file is a safetensors file whose
metadata holds a SHA-256 of the stored features; a file that cannot be read, or whose
features do not match their checksum, is reported, deleted and recomputed, never used.

A stream of frozen-backbone features is what *latent replay* trains on: the memory of any
replay strategy then holds feature vectors, not raw inputs.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torch import Tensor, nn

from retain.data.experience import Stream
from retain.util import evaluating, in_batches, module_device

# How features are computed: (encoder, inputs, batch size, progress label, progress bar) -> features.
Encode = Callable[[nn.Module, Tensor, int, str, bool], Tensor]


def tensor_digest(x: Tensor) -> str:
    """SHA-256 of a tensor's shape, dtype and bytes.

    >>> import torch
    >>> a = torch.zeros(3, 2); b = a.clone(); b[1, 1] = 1e-6
    >>> tensor_digest(a) == tensor_digest(a.clone()), tensor_digest(a) == tensor_digest(b)
    (True, False)
    """
    h = hashlib.sha256(f"{tuple(x.shape)}|{x.dtype}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class LazyEncoder:
    """An encoder built only when a feature is not in the cache (loading a large model costs seconds)."""

    def __init__(self, backbone_id: str, build: Callable[[], nn.Module]) -> None:
        self.backbone_id, self._build, self._module = backbone_id, build, None

    def get(self) -> nn.Module:
        if self._module is None:
            self._module = self._build()
            if self._module.backbone_id != self.backbone_id:
                raise ValueError(f"encoder id {self._module.backbone_id!r} is not the promised {self.backbone_id!r}")
        return self._module


def _resolve(encoder: nn.Module | LazyEncoder) -> nn.Module:
    return encoder.get() if isinstance(encoder, LazyEncoder) else encoder


@dataclass
class FeatureCache:
    """A folder of cached feature tensors; ``hits`` and ``misses`` count its use."""

    root: Path
    hits: int = 0
    misses: int = 0
    writes: bool = True  # False on all but one of several processes sharing the folder

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def key(self, backbone_id: str, x: Tensor) -> str:
        return f"{backbone_id}-{tensor_digest(x)[:32]}"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> Tensor | None:
        """The cached features under ``key``, or None when absent or corrupt (then the file is removed)."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                stored = f.metadata().get("sha256")
                feats = f.get_tensor("features")
            if stored != tensor_digest(feats):
                raise ValueError("checksum mismatch")
        except Exception as err:  # noqa: BLE001 - any unreadable file is a corrupt cache entry
            warnings.warn(f"feature cache file {path} is corrupt ({err}); recomputing it", stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return feats

    def store(self, key: str, feats: Tensor) -> None:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path(key).with_suffix(f".{os.getpid()}.tmp")  # processes filling one cache write apart
        save_file({"features": feats.contiguous()}, str(tmp), metadata={"sha256": tensor_digest(feats)})
        tmp.replace(self.path(key))

    def features(self, encoder: nn.Module | LazyEncoder, x: Tensor, batch_size: int = 128, desc: str = "features",
                 progress: bool = True, compute: Encode | None = None,
                 agree: Callable[[bool], bool] = lambda hit: hit) -> Tensor:
        """``encoder(x)`` in evaluation mode (by ``compute``, default :func:`encode`), from the
        cache when it was computed before. ``agree``: whether every process sharing the work found
        it too (processes that compute together must all compute, or none)."""
        key = self.key(encoder.backbone_id, x)
        feats = self.load(key)
        if not agree(feats is not None):
            feats = None
        if feats is None:
            self.misses += 1
            feats = (compute or encode)(_resolve(encoder), x, batch_size, desc, progress)
            if self.writes:
                self.store(key, feats)
        else:
            self.hits += 1
        return feats


def encode(encoder: nn.Module, x: Tensor, batch_size: int = 128, desc: str = "features",
           progress: bool = True) -> Tensor:
    """Run ``encoder`` over ``x`` in batches (evaluation mode), with a progress bar.

    Token inputs are sorted by length and batched by a token budget, so each batch carries
    little padding; an image CNN on the CPU takes fewer rows a batch (:func:`encoder_batches`).
    """
    with evaluating(encoder):
        return in_batches(encoder, encoder, x, batch_size, module_device(encoder), desc=desc, progress=progress)


def encode_stream(stream: Stream, encoder: nn.Module | LazyEncoder, cache: FeatureCache | None, batch_size: int = 128,
                  progress: bool = True, compute: Encode | None = None,
                  agree: Callable[[bool], bool] = lambda hit: hit) -> Stream:
    """The same stream with every input replaced by its (cached) frozen-backbone features,
    computed by ``compute`` (default :func:`encode`; several processes: each its share)."""
    def run(x: Tensor, what: str) -> Tensor:
        if cache is None:
            return (compute or encode)(_resolve(encoder), x, batch_size, what, progress)
        return cache.features(encoder, x, batch_size, what, progress, compute, agree)

    experiences = [
        replace(e, x_train=run(e.x_train, f"exp {e.id} train"), x_test=run(e.x_test, f"exp {e.id} test"))
        for e in stream
    ]
    return replace(stream, experiences=experiences,
                   metadata=stream.metadata | {"backbone": encoder.backbone_id})
