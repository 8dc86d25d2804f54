"""Engine layer: the Learner that trains a model with strategies, the online updater, saving and reloading."""

from retain.engine.learner import Learner, resolve_device
from retain.engine.online import OnlineResult, run_online
from retain.engine.updater import Consolidation, Hybrid, Updater

__all__ = ["Consolidation", "Hybrid", "Learner", "OnlineResult", "Updater", "resolve_device", "run_online"]
