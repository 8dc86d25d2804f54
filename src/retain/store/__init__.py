"""Store layer: model versions with their data batches and decisions; atomic promotion and rollback."""

from retain.store.store import Batch, ModelStore, StoreError, Version

__all__ = ["Batch", "ModelStore", "StoreError", "Version"]
