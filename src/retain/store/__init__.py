"""Store layer: model versions with their data batches and decisions; atomic promotion and rollback; the intake."""

from retain.store.intake import Feedback, Intake
from retain.store.store import Batch, ModelStore, StoreError, Version

__all__ = ["Batch", "Feedback", "Intake", "ModelStore", "StoreError", "Version"]
