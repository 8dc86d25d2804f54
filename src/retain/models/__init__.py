"""Model layer: backbones, heads that grow with new classes or tasks, and the classifier."""

from retain.models.backbones import MLP, ProgressiveMLP, SmallCNN
from retain.models.classifier import Classifier, make_model
from retain.models.heads import NEG, BiasCorrectedHead, IncrementalHead, LinearHead, MultiHead, NMEHead

__all__ = [
    "BiasCorrectedHead",
    "NMEHead",
    "ProgressiveMLP",
    "MLP",
    "NEG",
    "Classifier",
    "IncrementalHead",
    "LinearHead",
    "MultiHead",
    "SmallCNN",
    "make_model",
]
