"""Store backends behind one protocol; :func:`open_store` picks one from a store URL."""

from core.store.base import CountBucket, GaugeBucket, StateChange, Store, StoreError, StoreUnavailable

__all__ = ["CountBucket", "GaugeBucket", "StateChange", "Store", "StoreError", "StoreUnavailable"]
