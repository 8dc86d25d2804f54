"""Engine layer: the Learner that trains a model with strategies, the online updater, saving and reloading."""

from retain.engine.learner import Learner, resolve_device
from retain.engine.online import run_online
from retain.engine.persist import load_learner
from retain.engine.updater import Hybrid, Updater

__all__ = ["Hybrid", "Learner", "Updater", "load_learner", "resolve_device", "run_online"]
