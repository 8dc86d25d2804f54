"""Store layer: model versions with their data batches and decisions; atomic promotion and rollback; the intake."""

from retain.store.intake import Feedback, Intake
from retain.store.store import KEPT, Batch, ModelStore, Pending, StoreError, Version

__all__ = ["KEPT", "Batch", "Feedback", "Intake", "ModelStore", "Pending", "StoreError", "Version"]
