"""A classifier is a backbone plus a head; it can be rebuilt from its config."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from retain.models.backbones import BACKBONES
from retain.models.heads import HEADS, _build_head
from retain.models.pretrained import AudioCNN, ImageEncoder, TextEncoder


class Classifier(nn.Module):
    """``backbone`` features followed by ``head`` logits over the global classes.

    >>> import torch
    >>> model = make_model("mlp", (1, 8, 8), n_classes=10, hidden=(32,))
    >>> model(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def features(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        # Progressive networks pick a column per task; other backbones ignore task ids.
        return self.backbone(x, t) if getattr(self.backbone, "uses_task", False) else self.backbone(x)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        if not self.training and getattr(self.backbone, "routes_tasks", False):
            h, t = self.backbone.route(x)  # per-experience experts pick their own task id
            return self.head(h, t)
        return self.head(self.features(x, t), t)

    def get_config(self) -> dict[str, Any]:
        return {"backbone": self.backbone.get_config(), "head": self.head.get_config()}


MODELS = BACKBONES | {"text": TextEncoder, "image": ImageEncoder, "audio_cnn": AudioCNN}


def build_model(config: dict[str, Any]) -> Classifier:
    """Rebuild a classifier (with its current head sizes) from ``get_config()``."""
    backbone_cfg = dict(config["backbone"])
    name = backbone_cfg.pop("name")
    if name == "text":
        backbone_cfg["name"] = backbone_cfg.pop("model")
    backbone = MODELS[name](**backbone_cfg)
    head = _build_head(config["head"])
    return Classifier(backbone, head)


def make_model(
    name: str, input_shape: tuple[int, ...], n_classes: int, head: str = "fixed", **options: Any
) -> Classifier:
    """Build a fresh classifier for inputs of ``input_shape`` (without the batch axis).

    ``name`` is ``mlp``, ``cnn``, ``audio_cnn`` (log-mel inputs), ``text`` (token ids; options
    ``backbone`` minilm|tiny_text, ``adaptation``, ``lora_rank``) or ``image`` (options
    ``image_size``, ``pretrained``, ``adaptation``, ``lora_rank``).
    ``head`` is ``fixed`` (all ``n_classes`` units from the start), ``growing`` (units appear
    with the classes) or ``per_task`` (one head per task); the last two start empty.
    """
    if name == "mlp":
        in_features = 1
        for d in input_shape:
            in_features *= d
        backbone = BACKBONES["mlp"](in_features, **options)
    elif name == "cnn":
        backbone = BACKBONES["cnn"](input_shape[0], input_shape[-1], **options)
    elif name == "text":
        backbone = TextEncoder(options.pop("backbone", "minilm"), **options)
    elif name in ("image", "audio_cnn"):
        backbone = MODELS[name](**options)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of: mlp, cnn, audio_cnn, text, image")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    n_out = n_classes if head == "fixed" else 0
    return Classifier(backbone, HEADS[head](backbone.out_features, n_out))
