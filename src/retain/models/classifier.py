"""A classifier is a backbone plus a head; it can be rebuilt from its config."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from retain.models.backbones import BACKBONES
from retain.models.heads import HEADS, _build_head
from retain.models.pretrained import AudioCNN, ImageEncoder, TextEncoder, make_backbone


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

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Classifier:
        """Rebuild a classifier (with its current head sizes) from ``get_config()``."""
        backbone_cfg = dict(config["backbone"])
        name = backbone_cfg.pop("name")
        if name == "text":
            backbone_cfg["name"] = backbone_cfg.pop("model")
        return cls(MODELS[name](**backbone_cfg), _build_head(config["head"]))


MODELS = BACKBONES | {"text": TextEncoder, "image": ImageEncoder, "audio_cnn": AudioCNN}


def make_model(
    name: str, input_shape: tuple[int, ...], n_classes: int, head: str = "fixed", *, backbone: str | None = None,
    adaptation: str = "frozen", image_size: int = 64, lora_rank: int = 8, **options: Any,
) -> Classifier:
    """Build a fresh classifier for inputs of ``input_shape`` (without the batch axis): the one
    model builder (a config's model is built here too).

    ``name`` is ``mlp`` (option ``hidden``), ``cnn``, ``audio_cnn`` (log-mel inputs), ``text``
    (token ids; ``backbone`` minilm|tiny_text) or ``image`` (option ``pretrained``). With a
    pretrained ``backbone`` that trains (``adaptation`` ``lora`` or ``full``) the head sits
    directly on it and ``name`` is not used; a frozen backbone's features are the inputs of the
    ``name`` network instead (see ``retain.build``).
    ``head`` is ``fixed`` (all ``n_classes`` units from the start), ``growing`` (units appear
    with the classes) or ``per_task`` (one head per task); the last two start empty.
    """
    if backbone is not None and adaptation != "frozen":
        net = make_backbone(backbone, adaptation, image_size, lora_rank)
    elif name == "mlp":
        in_features = 1
        for d in input_shape:
            in_features *= d
        net = BACKBONES["mlp"](in_features, **options)
    elif name == "cnn":
        net = BACKBONES["cnn"](input_shape[0], input_shape[-1], **options)
    elif name == "text":
        net = TextEncoder(backbone or "minilm", adaptation, lora_rank, **options)
    elif name == "image":
        net = ImageEncoder(image_size, adaptation=adaptation, lora_rank=lora_rank, **options)
    elif name == "audio_cnn":
        net = AudioCNN(**options)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of: mlp, cnn, audio_cnn, text, image")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    n_out = n_classes if head == "fixed" else 0
    return Classifier(net, HEADS[head](net.out_features, n_out))
