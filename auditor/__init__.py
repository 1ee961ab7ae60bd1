"""memaudit's library: data, store, training, scores and flags as plain functions and small classes (no UI)."""

__version__ = "0.1.0"
